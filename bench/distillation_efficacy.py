"""Does distillation teach the student? Base vs distilled student on TweetEval sentiment val, per teacher, number N
of teacher-annotated posts, seed, mask mode and mask strength; written to docs/efficacy.md and docs/efficacy.json.

Each cell runs the pipeline's own stages on real posts: the teacher annotates posts (the texts of the gold train
split, labels never read, every post also in the evaluation split dropped) with the ``sns_tasks`` prompt; usable
annotations become training examples (the same chat messages and answer the evaluation scores); mask tables
come from ``masks.builder``; the trainer class-balances the train split (``TrainingConfig.balance_classes``); the LoRA is
trained by ``training.trainer.train_lora``; base and students are scored by calibrated label log-likelihood
(``evaluation.calibration``) on the same sampled val posts, with paired bootstrap intervals on shared
resamples (``evaluation.bootstrap``). The transfer ratio (student - base) / (teacher - base) is computed per
resample, so its interval is paired too.

Two teachers: the embedded SmolLM2 (``transformers serve`` on loopback) and the reference teacher
(TF-IDF+LR on gold train), not an LLM (``devtools.reference_teacher``): a teacher of known skill, fitted on
gold train posts other than the ones it annotates, to measure how much of a teacher's skill the pipeline
transfers.

    .venv/bin/python -m bench.distillation_efficacy               # CPU: the required grid; GPU: the full grid
    .venv/bin/python -m bench.distillation_efficacy --teachers reference --sizes 250 --seeds 0 --modes none
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from devtools.reference_teacher import NAME as REFERENCE_NAME
from devtools.reference_teacher import ReferenceTeacher
from opengrok_dagster.collect.client import ClientLimits, TeacherEndpoint
from opengrok_dagster.evaluation.api import ApiModel
from opengrok_dagster.evaluation.bootstrap import (
    Distribution,
    Estimate,
    bootstrap,
    paired_difference,
    resample_indices,
)
from opengrok_dagster.evaluation.calibration import calibrate, content_free_messages
from opengrok_dagster.evaluation.datasets import resolve_data_dir
from opengrok_dagster.evaluation.local import LocalStudent, read_checkpoint
from opengrok_dagster.evaluation.metrics import ClassificationScores
from opengrok_dagster.evaluation.runner import sample_items
from opengrok_dagster.evaluation.tasks import read_split, task_spec
from opengrok_dagster.filtering.annotations import class_label
from opengrok_dagster.masks.builder import build_mask_table
from opengrok_dagster.masks.config import MaskConfig
from opengrok_dagster.masks.linguistics import load_spacy
from opengrok_dagster.offline.model import check_offline_model, offline_model_dir
from opengrok_dagster.partitions import MASK_MODES
from opengrok_dagster.posts.leaks import normalise_post
from opengrok_dagster.sns_tasks import task_format
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.device import resolve_placement
from opengrok_dagster.training.trainer import TrainingJob, train_lora


ROOT = Path(__file__).resolve().parent.parent
TASK = "tweeteval_sentiment"
METRIC = "macro_recall"
VALIDATION_POSTS = 32  # teacher-annotated posts outside every N, for the trainer's validation loss
EMBEDDED_NAME = "embedded teacher (SmolLM2-135M-Instruct via transformers serve)"
# Mask strength: today's default tables, and a lighter mask (less random masking, higher keep probability).
STRENGTHS = {"default": MaskConfig(), "light": MaskConfig(delta=0.0, random_mask_rate=0.05)}
# The pipeline's defaults (rank 16, lr 1e-3, balanced classes: docs/efficacy.md, "Settings search"), run for one
# whole epoch of whatever N gives instead of the default run's 40 steps.
RECIPE = TrainingConfig(num_epochs=1.0, max_steps=-1, eval_steps=20, save_steps=20, early_stopping_patience=4)


@dataclass(frozen=True)
class Grid:
    teachers: tuple[str, ...]
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    modes: tuple[str, ...]
    strengths: tuple[str, ...]
    val_posts: int


GRIDS = {
    "cpu": Grid(("reference", "embedded"), (250, 1000), (0, 1), ("none", "hard"), ("default", "light"), 600),
    "gpu": Grid(("reference", "embedded"), (250, 1000, 4000), (0, 1, 2), MASK_MODES, ("default", "light"), 2000),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Teacher:
    name: str  # the name every figure carries
    model: ApiModel
    stop: callable


def start_teacher(kind: str, exclude: frozenset[str]) -> Teacher:
    if kind == "reference":
        server = ReferenceTeacher.fit(exclude=exclude, tasks=(TASK,)).start()
        log(server.describe())
        endpoint = TeacherEndpoint(server.base_url, "reference-teacher", None, label="reference")
        limits = ClientLimits(max_concurrency=16, max_attempts=2, timeout_s=30)
        return Teacher(REFERENCE_NAME, ApiModel("reference", lambda: endpoint, REFERENCE_NAME, limits), server.stop)
    from resources import TeacherResource

    resource = TeacherResource(mode="embedded", max_concurrency=16, max_tokens=16)
    return Teacher(
        EMBEDDED_NAME,
        ApiModel("embedded", resource.endpoint, EMBEDDED_NAME),
        lambda: resource.teardown_after_execution(None),
    )


def annotate(teacher: Teacher, posts: list[str]) -> np.ndarray:
    """The teacher's label index per post (-1 where its answer is unusable), asked exactly as the evaluation asks."""
    fmt = task_format(TASK)
    started = time.monotonic()
    answers = teacher.model.complete_all([fmt.messages(post) for post in posts], max_tokens=16).texts
    parsed = [fmt.parse(answer, post) for answer, post in zip(answers, posts)]
    labels = np.array([annotation.labels[0] if annotation.reason is None else -1 for annotation in parsed])
    log(
        f"{teacher.name}: {len(posts)} posts answered in {time.monotonic() - started:.0f}s, "
        f"{int((labels >= 0).sum())} usable"
    )
    return labels


def examples_frame(posts: list[str], labels: np.ndarray, split: str, prefix: str) -> pd.DataFrame:
    """Training examples in the mask builder's input shape: the evaluation's messages, the teacher's answer."""
    fmt = task_format(TASK)
    rows = []
    for index, (post, label) in enumerate(zip(posts, labels)):
        system, user = fmt.messages(post)
        rows.append(
            {
                "example_id": f"{prefix}{index:05d}",
                "split": split,
                "system_prompt": system["content"],
                "prompt": user["content"],
                "response": fmt.words[int(label)],
                "class_label": class_label(TASK, [int(label)]),  # what the trainer balances classes by
            }
        )
    return pd.DataFrame(rows)


def masked_share(table: pd.DataFrame) -> float:
    """Share of content (non-template) tokens the hard mask hides."""
    masked = content = 0
    for m, template in zip(table["m"], table["template_token"]):
        content_tokens = ~np.asarray(template, dtype=bool)
        content += int(content_tokens.sum())
        masked += int((np.asarray(m)[content_tokens] == 0).sum())
    return masked / content if content else float("nan")


class Scorer:
    """Calibrated and raw label scoring of the sampled val posts, for the base student and each adapter."""

    def __init__(self, model_path: str, texts: list[str], threads: int) -> None:
        fmt = task_format(TASK)
        self.model_path, self.threads = model_path, threads
        self.words = list(fmt.words)
        self.messages = [fmt.messages(t) for t in texts]
        self.content_free = content_free_messages(fmt.messages)

    def predictions(self, student: LocalStudent, variant: str) -> tuple[np.ndarray, np.ndarray]:
        started = time.monotonic()
        with student.using(variant):
            items = student.label_logprobs(self.messages, self.words)
            free = student.label_logprobs(self.content_free, self.words)
        log(f"{variant}: scored {len(self.messages)} val posts in {time.monotonic() - started:.0f}s")
        return calibrate(items, free).argmax(axis=1), items.argmax(axis=1)


def estimate_dict(estimate: Estimate) -> dict:
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high}


def mean_distribution(distributions: list[Distribution]) -> Distribution:
    """The seed-averaged student: the mean of the seeds' metrics on the full sample and on every shared resample."""
    return Distribution(
        {METRIC: float(np.mean([d.point[METRIC] for d in distributions]))},
        {METRIC: np.mean([d.samples[METRIC] for d in distributions], axis=0)},
    )


def transfer_ratio(student: Distribution, base: Distribution, teacher: Distribution, level: float = 0.95) -> dict:
    """(student - base) / (teacher - base) on the full sample and per resample (paired); resamples where the teacher
    is no better than the base are left out of the interval, and counted."""
    gain = teacher.samples[METRIC] - base.samples[METRIC]
    usable = gain > 0
    ratios = (student.samples[METRIC][usable] - base.samples[METRIC][usable]) / gain[usable]
    point_gain = teacher.point[METRIC] - base.point[METRIC]
    value = (student.point[METRIC] - base.point[METRIC]) / point_gain if point_gain > 0 else float("nan")
    low, high = (
        np.percentile(ratios, [100 * (1 - level) / 2, 100 * (1 + level) / 2]) if ratios.size else (np.nan, np.nan)
    )
    return {"value": value, "low": float(low), "high": float(high), "resamples_left_out": int((~usable).sum())}


def train_cell(
    model_path: str, table: pd.DataFrame, mode: str, seed: int, directory: Path, config: TrainingConfig, placement
):
    job = TrainingJob(
        mode,
        model_path,
        directory / mode,
        config.model_copy(update={"seed": seed}),
        placement,
        data_versions={"bench": "distillation_efficacy"},
    )
    started = time.monotonic()
    outcome = train_lora(job, table, log=lambda message: None)
    log(
        f"trained {mode}: {outcome.train_examples} examples, {outcome.global_step} steps, "
        f"val loss {outcome.best_val_loss:.3f}, "
        f"{time.monotonic() - started:.0f}s"
    )
    return outcome, time.monotonic() - started


def git_commit() -> str:
    described = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    return described.stdout.strip() or "unknown"


def run(grid: Grid, args, command: str) -> dict:
    data_dir = resolve_data_dir()
    if data_dir is None:
        raise SystemExit("no data directory: set OPENGROK_DATA_DIR to a folder laid out like shared/data")
    model_path = str(check_offline_model(offline_model_dir()))
    placement = resolve_placement("auto", "auto")
    spec = task_spec(TASK)
    val = read_split(spec, data_dir, spec.eval_path)
    val_index = sample_items(len(val.texts), grid.val_posts, 0)
    val_texts, gold = [val.texts[i] for i in val_index], val.labels[val_index]
    held = {normalise_post(t) for t in val.texts}
    train = read_split(spec, data_dir, spec.train_paths, train=True)  # texts only: the labels are never read
    unique = list(dict.fromkeys(t for t in train.texts if normalise_post(t) not in held))
    pool = [
        unique[i] for i in np.random.default_rng(1234).permutation(len(unique))[: max(grid.sizes) + VALIDATION_POSTS]
    ]
    log(
        f"{len(pool)} posts to annotate from {train.source} "
        f"({len(train.texts) - len(unique)} dropped as duplicates or eval posts)"
    )
    indices = resample_indices(len(gold), args.resamples, 0)
    scorer = Scorer(model_path, val_texts, args.threads)
    base_student = LocalStudent(model_path, threads=args.threads)
    base_calibrated, base_raw = scorer.predictions(base_student, LocalStudent.BASE)
    del base_student
    base = bootstrap(ClassificationScores(gold, base_calibrated, 3), indices)
    base_uncalibrated = bootstrap(ClassificationScores(gold, base_raw, 3), indices)
    nlp = load_spacy(MaskConfig().spacy_model)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(model_path)
    result = {
        "task": TASK,
        "metric": METRIC,
        "val_posts": len(gold),
        "val_source": val.source,
        "command": command,
        "commit": git_commit(),
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "device": placement.description,
        "load_average_before": os.getloadavg()[0],
        "grid": asdict(grid),
        "recipe": RECIPE.model_dump(),
        "class_balance": True,
        "scoring": "calibrated label log-likelihood (content-free prompts N/A, '', [MASK])",
        "base": {
            "calibrated": estimate_dict(base.estimate(METRIC)),
            "raw": estimate_dict(base_uncalibrated.estimate(METRIC)),
            "predicted_counts": np.bincount(base_calibrated, minlength=3).tolist(),
        },
        "teachers": {},
        "cells": [],
        "summary": [],
    }
    for kind in grid.teachers:
        teacher = start_teacher(kind, frozenset(normalise_post(t) for t in pool))
        try:
            teacher_val = annotate(teacher, val_texts)
            labels = annotate(teacher, pool)
        finally:
            teacher.stop()
        teacher_scores = bootstrap(ClassificationScores(gold, teacher_val, 3), indices)
        result["teachers"][kind] = {
            "name": teacher.name,
            "val": estimate_dict(teacher_scores.estimate(METRIC)),
            "val_unparseable": float((teacher_val < 0).mean()),
            "annotated": len(pool),
            "usable": int((labels >= 0).sum()),
            "label_counts": np.bincount(labels[labels >= 0], minlength=3).tolist(),
        }
        write_outputs(result, args, partial=True)
        validation_posts, validation_labels = pool[-VALIDATION_POSTS:], labels[-VALIDATION_POSTS:]
        train_posts, train_labels = pool[:-VALIDATION_POSTS], labels[:-VALIDATION_POSTS]
        validation = examples_frame(validation_posts, validation_labels, "validation", "v")[validation_labels >= 0]
        for size in grid.sizes:
            by_cell: dict[tuple[str, str], list[Distribution]] = {}
            for seed in grid.seeds:
                chosen = np.random.default_rng(seed).permutation(len(train_posts))[:size]
                chosen = chosen[train_labels[chosen] >= 0]
                examples = pd.concat(
                    [examples_frame([train_posts[i] for i in chosen], train_labels[chosen], "train", "t"), validation],
                    ignore_index=True,
                )
                unmasked = None  # this seed's mode-none student: every masked mode is also compared with it
                with tempfile.TemporaryDirectory(prefix="efficacy-") as scratch:
                    for strength in grid.strengths:
                        config = STRENGTHS[strength].model_copy(update={"seed": seed})
                        table = build_mask_table(examples, tokenizer, nlp, config).table
                        share = masked_share(table[table["split"] == "train"])
                        for mode in grid.modes:
                            if mode == "none" and strength != grid.strengths[0]:
                                continue  # mode none ignores the mask: one run covers every strength
                            directory = Path(scratch) / strength
                            outcome, seconds = train_cell(model_path, table, mode, seed, directory, RECIPE, placement)
                            checkpoint = read_checkpoint(directory / mode, mode)
                            student = LocalStudent(model_path, [checkpoint], threads=args.threads)
                            calibrated, raw = scorer.predictions(student, checkpoint.variant)
                            del student
                            scores = bootstrap(ClassificationScores(gold, calibrated, 3), indices)
                            cell_strength = strength if mode != "none" else "-"
                            by_cell.setdefault((mode, cell_strength), []).append(scores)
                            difference = paired_difference(scores, base, METRIC)
                            if mode == "none":
                                unmasked = scores
                            versus_none = (
                                paired_difference(scores, unmasked, METRIC)
                                if mode != "none" and "none" in grid.modes
                                else None
                            )
                            result["cells"].append(
                                {
                                    "teacher": kind,
                                    "n": size,
                                    "seed": seed,
                                    "mode": mode,
                                    "strength": cell_strength,
                                    "masked_share": share if mode != "none" else 0.0,
                                    "train_examples_balanced": outcome.train_examples,
                                    "steps": outcome.global_step,
                                    "train_seconds": round(seconds),
                                    "student": estimate_dict(scores.estimate(METRIC)),
                                    "student_raw": bootstrap(ClassificationScores(gold, raw, 3), indices).point[
                                        METRIC
                                    ],
                                    "predicted_counts": np.bincount(calibrated, minlength=3).tolist(),
                                    "difference": {
                                        "value": difference.value,
                                        "low": difference.low,
                                        "high": difference.high,
                                        "p_value": difference.p_value,
                                    },
                                    "transfer_ratio": transfer_ratio(scores, base, teacher_scores),
                                    "minus_none": versus_none
                                    and {
                                        "value": versus_none.value,
                                        "low": versus_none.low,
                                        "high": versus_none.high,
                                        "p_value": versus_none.p_value,
                                    },
                                }
                            )
                            write_outputs(result, args, partial=True)
            for (mode, strength), distributions in by_cell.items():
                student = mean_distribution(distributions)
                difference = paired_difference(student, base, METRIC)
                result["summary"].append(
                    {
                        "teacher": kind,
                        "n": size,
                        "mode": mode,
                        "strength": strength,
                        "seeds": len(distributions),
                        "base": estimate_dict(base.estimate(METRIC)),
                        "student": estimate_dict(student.estimate(METRIC)),
                        "teacher_score": estimate_dict(teacher_scores.estimate(METRIC)),
                        "difference": {
                            "value": difference.value,
                            "low": difference.low,
                            "high": difference.high,
                            "p_value": difference.p_value,
                        },
                        "transfer_ratio": transfer_ratio(student, base, teacher_scores),
                    }
                )
            write_outputs(result, args, partial=True)
    result["load_average_after"] = os.getloadavg()[0]
    return result


def _ci(entry: dict, digits: int = 3) -> str:
    return f"{entry['value']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def markdown(result: dict, partial: bool) -> str:
    grid, recipe = result["grid"], result["recipe"]
    after = f", {result['load_average_after']:.1f} after" if "load_average_after" in result else ""
    lines = [
        f"Task {result['task']} ({result['val_source']}), {result['val_posts']} val posts, metric {result['metric']}; "
        f"95% paired percentile bootstrap intervals on shared resamples. Command `{result['command']}`, commit "
        f"{result['commit']}, started {result['started']} on {result['device']}, load average "
        f"{result['load_average_before']:.1f} before{after}.",
        "",
        f"Grid: teachers {', '.join(grid['teachers'])}; N {', '.join(map(str, grid['sizes']))}; seeds "
        f"{', '.join(map(str, grid['seeds']))}; modes {', '.join(grid['modes'])}; "
        f"mask strengths {', '.join(grid['strengths'])}."
        + (
            " **Partial: the run was still going (or stopped) when this was written; only the cells below were"
            " measured.**"
            if partial
            else ""
        ),
        "",
        f"Recipe: class-balanced train split (oversampled to the largest class), LoRA r={result['recipe']['lora_r']}, "
        f"alpha={recipe['lora_alpha']}, lr {recipe['learning_rate']}, {recipe['num_epochs']} epochs, "
        f"batch {recipe['batch_size']}, max_length {recipe['max_length']}; scoring: {result['scoring']}.",
        "",
        f"Base student: {_ci(result['base']['calibrated'])} calibrated ({_ci(result['base']['raw'])} uncalibrated; "
        f"calibrated predictions per class neg/neu/pos {result['base']['predicted_counts']}).",
        "",
        "| teacher | teacher on val | unparseable | annotated posts usable | teacher label counts neg/neu/pos |",
        "|---|---|---:|---:|---|",
    ]
    for teacher in result["teachers"].values():
        lines.append(
            f"| {teacher['name']} | {_ci(teacher['val'])} | {teacher['val_unparseable']:.3f} | "
            f"{teacher['usable']} of {teacher['annotated']} | {teacher['label_counts']} |"
        )
    lines += [
        "",
        "Mean over seeds (the seed-averaged student on the same resamples):",
        "",
        "| teacher | N | mode | mask strength | seeds | base | student | teacher | student - base | transfer ratio |",
        "|---|---:|---|---|---:|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['teacher']} | {row['n']} | {row['mode']} | {row['strength']} | {row['seeds']} | "
            f"{_ci(row['base'])} | {_ci(row['student'])} | {_ci(row['teacher_score'])} | {_ci(row['difference'])} | "
            f"{_ci(row['transfer_ratio'], 2)} |"
        )
    lines += [
        "",
        "Every cell:",
        "",
        "| teacher | N | seed | mode | strength | masked share | balanced examples | steps | train s | student | "
        "uncalibrated | "
        "predicted neg/neu/pos | student - base | transfer ratio | masked - none (same seed) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---|---:|---|---|---|---|",
    ]
    for c in result["cells"]:
        lines.append(
            f"| {c['teacher']} | {c['n']} | {c['seed']} | {c['mode']} | {c['strength']} | {c['masked_share']:.2f} | "
            f"{c['train_examples_balanced']} | {c['steps']} | {c['train_seconds']} | {_ci(c['student'])} | "
            f"{c['student_raw']:.3f} | "
            f"{c['predicted_counts']} | {_ci(c['difference'])} | {_ci(c['transfer_ratio'], 2)} | "
            f"{_ci(c['minus_none']) if c.get('minus_none') else '-'} |"
        )
    return "\n".join(lines) + "\n"


PAGE_HEADER = """# Distillation efficacy

Written by `bench/distillation_efficacy.py` (a `make bench` section: `python -m bench --only efficacy`). It measures
whether distillation teaches the student the SNS task it is scored on, and how much of a teacher's skill it
transfers: the transfer ratio is (student - base) / (teacher - base) on the same val posts. The "reference"
teacher is the reference teacher (TF-IDF+LR on gold train), not an LLM: a classifier of known skill served
over the OpenAI API (`devtools/reference_teacher.py`), fitted on gold train posts other than those it annotates.
The "embedded" teacher is SmolLM2-135M-Instruct, the offline default. The figures below are what the run
measured, whatever they show; the JSON beside this page (docs/efficacy.json) holds them all.

"""


KEPT = re.compile(r"<!-- kept -->.*?<!-- /kept -->\n", re.S)


def kept_notes(path: Path) -> str:
    """The hand-written part of the page (the settings search), between ``<!-- kept -->`` markers, kept on rewrite."""
    match = KEPT.search(path.read_text()) if path.is_file() else None
    return match.group(0) + "\n" if match else ""


def earlier_runs(path: Path) -> list[dict]:
    """The runs already in the JSON file (``--append`` adds one: a cell a shared CPU fits only in another run)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return data["runs"] if "runs" in data else [data]


def write_outputs(result: dict, args, partial: bool) -> None:
    runs = [*args.earlier, result | {"partial": partial}]
    sections = [
        f"## Measured{f' (run {i} of {len(runs)})' if len(runs) > 1 else ''}\n\n{markdown(run, run['partial'])}"
        for i, run in enumerate(runs, 1)
    ]
    page = PAGE_HEADER + kept_notes(args.output) + "\n".join(sections)
    for path, text in ((args.output, page), (args.json, json.dumps({"runs": runs}, indent=2, default=float) + "\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(path.suffix + ".partial")
        staging.write_text(text)
        staging.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grid", choices=sorted(GRIDS), help="preset grid (default: gpu when CUDA is available, else cpu)"
    )
    parser.add_argument("--teachers", nargs="+", choices=("reference", "embedded"))
    parser.add_argument("--sizes", nargs="+", type=int, help="numbers N of teacher-annotated posts")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--modes", nargs="+", choices=MASK_MODES)
    parser.add_argument("--strengths", nargs="+", choices=sorted(STRENGTHS))
    parser.add_argument("--val-posts", type=int, help="TweetEval sentiment val posts scored (0 = all 2,000)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads for the local models (0 = torch's default)"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "efficacy.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "efficacy.json")
    parser.add_argument("--append", action="store_true", help="keep the runs already in --json and add this one")
    args = parser.parse_args()
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    preset = GRIDS[args.grid or ("gpu" if torch.cuda.is_available() else "cpu")]
    grid = Grid(
        *(
            getattr(args, name) or getattr(preset, name)
            for name in ("teachers", "sizes", "seeds", "modes", "strengths")
        ),
        preset.val_posts if args.val_posts is None else args.val_posts,
    )
    args.earlier = earlier_runs(args.json) if args.append else []
    command = "python -m bench.distillation_efficacy " + shlex.join(sys.argv[1:])
    result = run(grid, args, command.strip())
    write_outputs(result, args, partial=False)
    print(markdown(result, partial=False))


if __name__ == "__main__":
    main()
