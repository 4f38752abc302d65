"""Mask-table throughput against bare spaCy: words/s of ``build_mask_table`` vs ``nlp.pipe`` alone.

Both run in one process on the same distinct texts (system prompt, prompts and responses built from real
SemEval tweets), with the same spaCy components (tagger, parser, attribute_ruler; no ner or lemmatizer),
batch size and process count. Rounds alternate so background load hits both alike; each side's best round
(the one least disturbed, as timeit advises) gives the ratio, and the medians are printed beside it.
Rates use this process's CPU time (other processes on a shared machine do not count against it); with
--n-process > 1 the parsing happens in child processes, so wall-clock time is used instead. Both sides run
on one core: the tokenizers thread pool is off (TOKENIZERS_PARALLELISM=false, unless set), since its idle
threads spin on a busy machine and their CPU time would be billed to the mask side.
The ratio shows what rendering, tokenising, TF-IDF, alignment and sampling add on top of parsing (target >= 0.8).

    .venv/bin/python -m bench.mask_throughput
    .venv/bin/python -m bench.mask_throughput --examples 4000 --rounds 5 --n-process 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pandas as pd


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from transformers import AutoTokenizer  # noqa: E402  (after the thread-pool setting)

from bench.measure import spread  # noqa: E402
from opengrok_dagster.masks.builder import build_mask_table  # noqa: E402
from opengrok_dagster.masks.config import DEFAULT_SPACY_MODEL, MaskConfig  # noqa: E402
from opengrok_dagster.masks.linguistics import load_spacy  # noqa: E402
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir  # noqa: E402


SEMEVAL = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "semeval2017_task4a"
    / "twitter-2016train-A.tsv"
)
SYSTEM_PROMPT = "You are a careful social-media analyst. Answer in one or two sentences."


def tweet_examples(n: int) -> pd.DataFrame:
    """``n`` examples: a prompt quoting one tweet, a response made of another (distinct texts throughout)."""
    tweets = list(
        dict.fromkeys(
            line.split("\t", 2)[2]
            for line in SEMEVAL.read_text(encoding="utf-8").splitlines()
            if line.count("\t") >= 2
        )
    )
    if len(tweets) < 2 * n:
        raise SystemExit(f"{SEMEVAL} has {len(tweets)} distinct tweets; ask for at most {len(tweets) // 2} examples")
    return pd.DataFrame(
        {
            "example_id": [f"bench-{i}" for i in range(n)],
            "split": ["validation" if i % 10 == 9 else "train" for i in range(n)],
            "system_prompt": SYSTEM_PROMPT,
            "prompt": [f"What is the sentiment of this post? {tweets[2 * i]}" for i in range(n)],
            "response": [tweets[2 * i + 1] for i in range(n)],
        }
    )


def timed(clock, work) -> tuple[int, float]:
    """(words, seconds on ``clock``) of ``work()``, which returns the words it processed."""
    began = clock()
    words = work()
    return words, clock() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=MaskConfig.model_fields["spacy_batch_size"].default)
    parser.add_argument("--n-process", type=int, default=MaskConfig.model_fields["spacy_n_process"].default)
    parser.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL)
    args = parser.parse_args()

    config = MaskConfig(spacy_model=args.spacy_model, spacy_batch_size=args.batch_size, spacy_n_process=args.n_process)
    tokenizer = AutoTokenizer.from_pretrained(str(check_offline_model(offline_model_dir())))
    nlp = load_spacy(config.spacy_model)
    examples = tweet_examples(args.examples)
    texts = list(dict.fromkeys([SYSTEM_PROMPT, *examples["prompt"], *examples["response"]]))
    build_mask_table(examples.head(50), tokenizer, nlp, config)  # warm-up: imports (scikit-learn) and spaCy caches

    clock = time.process_time if config.spacy_n_process == 1 else time.perf_counter

    def bare_pipe():
        return sum(
            len(doc) for doc in nlp.pipe(texts, batch_size=config.spacy_batch_size, n_process=config.spacy_n_process)
        )

    build = lambda: build_mask_table(examples, tokenizer, nlp, config).words  # noqa: E731
    bare_rates, mask_rates = [], []
    for _ in range(args.rounds):
        words, seconds = timed(clock, bare_pipe)
        bare_rates.append(words / seconds)
        mask_words, seconds = timed(clock, build)
        assert mask_words == words, "both sides must count the same words"
        mask_rates.append(mask_words / seconds)
    ratios = [m / b for m, b in zip(mask_rates, bare_rates)]  # each round times both sides back to back
    print(
        f"# mask_throughput: {args.examples} examples, {len(texts)} distinct texts, {words} spaCy words, "
        f"{config.spacy_model} {nlp.pipe_names}, batch {config.spacy_batch_size}, n_process {config.spacy_n_process}, "
        f"{platform.processor() or platform.machine()}, {'CPU' if clock is time.process_time else 'wall'} seconds, "
        f"TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}, {args.rounds} rounds\n"
    )
    print("| run | words/s, median (min-max) |\n|---|---:|")
    print(f"| bare nlp.pipe | {spread(bare_rates)} |\n| build_mask_table | {spread(mask_rates)} |")
    print(f"| ratio mask/bare per round (target >= 0.8) | {spread(ratios, 2)} |")


if __name__ == "__main__":
    main()
