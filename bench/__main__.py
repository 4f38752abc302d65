"""Every benchmark in one command, written to docs/benchmarks.md, with the studies of experiments/ (the efficacy
experiment, the tokenizer alignment study) as sections of their own.

Each bench runs as its own process (so peak memory is its own) and prints Markdown; this collects the
tables under the machine details, with the exact command, the date, the commit, the load average before
and after, the wall time and the peak memory of each. Running some benches replaces only their sections.

    make bench                                      # all but gpu_check (about three hours on the 2-core machine)
    .venv/bin/python -m bench --only gpu_check      # on a GPU machine
    .venv/bin/python -m bench --only filter mask    # rerun some; the rest of docs/benchmarks.md is kept
    .venv/bin/python -m bench --list
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.measure import gib, machine_details, run_measured
from opengrok_dagster.publish import publishing


ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Bench:
    title: str
    module: str
    args: tuple[str, ...]
    target: str
    needs_gpu: bool = False  # run with --only; a plain run (on the CPU machine) keeps its section as it is

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


# Repeats are chosen so that the whole set fits in about three hours on 2 cores (half of it the two efficacy
# runs); the ratio benches time both sides in one process, interleaved, so load drift hits both alike.
BENCHES = {
    "collection": Bench(
        "Collection throughput vs ideal",
        "bench.collection_throughput",
        ("--repeats", "3"),
        "achieved / ideal >= 0.9 at every concurrency",
    ),
    "filter": Bench("Filter chain", "bench.filter_throughput", ("--repeats", "3"), ">= 1,000 rows/s"),
    "mask": Bench("Mask tables vs bare spaCy", "bench.mask_throughput", ("--rounds", "5"), "words/s ratio >= 0.8"),
    "attention": Bench(
        "Masked attention vs stock SDPA, per mode",
        "bench.attention_overhead",
        ("--rounds", "5", "--threads", "1", "--clock", "cpu"),
        "masked / stock <= 1.10",
    ),
    "training": Bench(
        "Training tokens/s vs TRL SFTTrainer",
        "bench.training_throughput",
        ("--steps", "6", "--repeats", "2", "--threads", "1", "--clock", "cpu", "--packing"),
        "ours / TRL >= 1.5",
    ),
    "kd_alignment": Bench(
        "Distillation: aligned share of response tokens across tokenizers",
        "experiments.kd_alignment",
        (),
        ">= 80% of English tweet response tokens",
    ),
    "kd_overhead": Bench(
        "Distillation: training step with the KD term vs cross-entropy only",
        "bench.kd_overhead",
        ("--rounds", "5", "--threads", "1", "--clock", "cpu"),
        "KD / CE <= 1.15",
    ),
    "evaluation": Bench("Default evaluation", "bench.evaluation_time", ("--repeats", "3"), "<= 300 s"),
    "eval_floor": Bench(
        "Evaluation seconds per post vs the post's compute floor",
        "bench.evaluation_floor",
        ("--posts", "48", "--rounds", "5", "--threads", "1", "--clock", "cpu"),
        "scorer / floor <= 1.5",
    ),
    "labelling_floor": Bench(
        "post_labels posts/s vs the evaluation's compute floor for the same posts",
        "bench.labelling_floor",
        ("--posts", "128", "--rounds", "5", "--threads", "1", "--clock", "cpu"),
        "labeller / floor (throughput) >= 0.9",
    ),
    "efficacy": Bench(
        "Distillation efficacy, TweetEval sentiment (full page: docs/efficacy.md, figures: docs/efficacy.json)",
        "experiments.distillation_efficacy",
        (),
        "the required grid (both teachers, N = 250 and 1,000, 2 seeds, modes none and hard) within 60 minutes on a "
        "2-core CPU; reference teacher, N = 1,000, mode none: transfer ratio >= 0.7 with lower bound > 0",
    ),
    "efficacy_ner": Bench(
        "Distillation efficacy, BTC named entities (added to docs/efficacy.md and docs/efficacy.json)",
        "experiments.distillation_efficacy",
        ("--task", "btc", "--teachers", "reference", "--val-posts", "300", "--append"),
        "every mask mode's entity F1 against the base, with intervals, whatever it shows",
    ),
    "end_to_end": Bench(
        "End to end: `opengrok run` on the offline default",
        "bench.end_to_end",
        ("--fresh", "3", "--unchanged", "1"),
        "fresh run <= 15 minutes",
    ),
    "gpu_check": Bench(
        "GPU check (one H200)",
        "bench.gpu_check",
        (),
        "finishes in <= 8 minutes; >= 200 sentiment posts/s; ours / TRL >= 1.5",
        needs_gpu=True,
    ),
}

HEADER = """# Benchmarks

Written by `make bench` (`.venv/bin/python -m bench`; `--only NAME ...` reruns some sections and keeps the
others). Figures measured several times are given as median (min-max). Peak memory is the resident memory
of the bench's whole process tree (model servers and training subprocesses included; shared pages count
once per process, so it is an upper bound). Wall-clock figures depend on what else ran: each section gives
the load average before and after it. The sections `kd_alignment`, `efficacy` and `efficacy_ner` run the studies
of experiments/ (`python -m experiments.kd_alignment`, `python -m experiments.distillation_efficacy`); a
section's command names the module where it lived when the section was measured.
"""


def git_commit() -> str:
    described = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    return described.stdout.strip() or "unknown"


def section(name: str, bench: Bench) -> str:
    load_before = os.getloadavg()[0]
    started = datetime.now(UTC)
    print(f"== {name}: {' '.join(bench.command()[1:])}", file=sys.stderr, flush=True)
    measured = run_measured(bench.command())
    if measured.returncode:
        raise SystemExit(
            f"bench {name} failed (exit {measured.returncode}); its section in docs/benchmarks.md is left as it was"
        )
    facts = (
        f"`.venv/bin/python -m {bench.module} {' '.join(bench.args)}` | {started:%Y-%m-%d %H:%M} UTC, "
        f"commit {git_commit()} | {measured.seconds:,.0f} s | load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after | peak memory {gib(max(measured.stage_peak_rss.values(), default=0))}"
    )
    return (
        f"<!-- bench:{name} -->\n## {bench.title}\n\nTarget: {bench.target}.\n\n{facts}\n\n"
        f"{measured.output.strip()}\n<!-- /bench:{name} -->\n"
    )


def kept_sections(text: str) -> dict[str, str]:
    return {
        match[1]: match[0] + "\n" for match in re.finditer(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", text, re.S)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHES), help="run these benches; keep the other sections"
    )
    parser.add_argument("--output", type=Path, default=REPORT)
    parser.add_argument("--list", action="store_true", help="print the benches and their commands")
    args = parser.parse_args()
    if args.list:
        for name, bench in BENCHES.items():
            print(f"{name:12} {' '.join(bench.command()[1:])}  (target: {bench.target})")
        return
    sections = kept_sections(args.output.read_text()) if args.output.exists() else {}
    for name in args.only or [name for name, bench in BENCHES.items() if not bench.needs_gpu]:
        sections[name] = section(name, BENCHES[name])
        body = "\n".join(sections[key] for key in BENCHES if key in sections)
        with publishing(args.output) as (partial,):  # written after each bench, so a later failure loses none
            partial.write_text(f"{HEADER}\nMachine: {machine_details()}.\n\n{body}")
        print(f"== {name}: written to {args.output}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
