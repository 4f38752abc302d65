"""Filter throughput: rows/s of the whole filter chain (PII scrubbing, every check, toxicity, language,
MinHash dedup, split) on 10,000 real tweets standing in for teacher responses.

The tweets come from the shared TweetEval (English: sentiment, offensive, hate) and TweetTopicXL (es, ja,
gr) sets, so every check has real work: profanity, slurs, mentions, URLs, other languages, retweeted
duplicates. Model loading is timed apart: it happens once per materialisation.

    .venv/bin/python -m bench.filter_throughput [--rows 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from itertools import cycle, islice

import pandas as pd

from bench.measure import spread
from opengrok_dagster.filtering.chain import FilterModels, filter_responses
from opengrok_dagster.filtering.config import FilterConfig
from opengrok_dagster.filtering.language import language_text
from opengrok_dagster.settings import REPO_ROOT
from opengrok_dagster.tasks.schemas import RAW_COLUMNS


DATA = REPO_ROOT.parent / "shared" / "data"
TARGET_ROWS_PER_S = 1000


def real_texts(rows: int) -> list[str]:
    texts = []
    for task, split in (("sentiment", "val"), ("offensive", "train"), ("hate", "train"), ("irony", "train")):
        texts += (DATA / "tweeteval" / task / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
    for language in ("es", "ja", "gr"):
        lines = (
            (DATA / "tweet_topic_xl" / language / f"{language}_train.jsonl").read_text(encoding="utf-8").splitlines()
        )
        texts += [json.loads(line)["text"] for line in lines]
    return list(islice(cycle(texts), rows))  # past the corpus size, repeats become exact duplicates


def raw_frame(texts: list[str]) -> pd.DataFrame:
    n = len(texts)
    columns = dict.fromkeys(RAW_COLUMNS, "x")
    columns.update(
        {
            "prompt_id": [f"p{i % 2000}" for i in range(n)],
            "topic": [f"topic{i % 8}" for i in range(n)],
            "round": "2026-11-25",
            "template_id": [f"t{i % 6}" for i in range(n)],
            "sampling_key": [f"s{i}" for i in range(n)],
            "response": texts,
            "finish_reason": "stop",
            "error": None,
            "collected_at": [f"2026-11-25T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}" for i in range(n)],
        }
    )
    return pd.DataFrame(columns).loc[:, list(RAW_COLUMNS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = FilterConfig()
    started = time.perf_counter()
    models = FilterModels.load(config)
    load_s = time.perf_counter() - started
    texts = real_texts(args.rows)
    raw = raw_frame(texts)

    seconds, cpu_seconds = [], []
    for _ in range(args.repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        filtered = filter_responses(raw, config, models, {})
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    started = time.perf_counter()
    models.toxicity.score(texts)
    toxicity_s = time.perf_counter() - started
    started = time.perf_counter()
    models.language.detect([language_text(t) for t in texts])
    language_s = time.perf_counter() - started

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load} (other work slows every figure), "
        f"python {platform.python_version()}; {args.rows} rows, {args.repeats} repeats\n"
    )
    print("| stage | seconds | rows/s |\n|---|---:|---:|")
    print(f"| load models (once per run) | {load_s:.1f} | - |")
    print(f"| toxicity alone ({models.toxicity.name}) | {toxicity_s:.2f} | {args.rows / toxicity_s:,.0f} |")
    print(
        f"| language alone (lingua, {len(config.detected_languages)} languages) | {language_s:.2f} | {args.rows / language_s:,.0f} |"
    )
    print(f"| whole chain, median (min-max) | {spread(seconds, 2)} | {spread([args.rows / s for s in seconds])} |")
    # CPU time (all threads) hardly depends on other work on the machine: the rate an idle core would give.
    print(
        f"| whole chain, CPU seconds (all threads) | {spread(cpu_seconds, 2)} | {spread([args.rows / s for s in cpu_seconds])} per CPU-second |"
    )
    print(f"\nstates: {filtered['state'].value_counts().to_dict()}")
    rate = args.rows / statistics.median(seconds)
    print(f"target >= {TARGET_ROWS_PER_S} rows/s: {'met' if rate >= TARGET_ROWS_PER_S else 'NOT met'}")


if __name__ == "__main__":
    main()
