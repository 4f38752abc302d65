"""Does distillation teach the student? Base vs distilled student on TweetEval sentiment val (or, with ``--task btc``,
BTC entities: ``bench.efficacy_tasks``), per teacher, number N of teacher-annotated posts, seed, mask mode and mask
strength; written to docs/efficacy.md and docs/efficacy.json.

Each cell runs the pipeline's own stages on real posts: the teacher annotates posts (the texts of the gold train
split, labels never read, every post also in the evaluation split dropped) with the ``tasks.formats`` prompt; usable
annotations become training examples (the same chat messages and answer the evaluation scores); mask tables
come from ``masks.builder``; the trainer class-balances the train split (``TrainingConfig.balance_classes``); the LoRA is
trained by ``training.trainer.train_lora``; base and students are scored every way that applies (greedy
generation parsed for a label, calibrated and raw label log-likelihood: ``evaluation.calibration``), the teacher
by generation, all on the same sampled posts of the val split's reporting part (``--split tuning`` scores the
tuning part, where recipes are chosen), with paired bootstrap intervals on shared resamples
(``evaluation.bootstrap``). The headline (``--scoring``, default generated) is one scoring every compared model
has. Seed-pooled figures have hierarchical intervals (seeds resampled, then posts), and every comparison of one
(teacher, N) is Holm-corrected with the others (the family is printed). The transfer ratio (student - base) /
(teacher - base), on generation, is computed per resample, so its interval is paired too; with the embedded
teacher, the student's own base checkpoint, it is self-distillation and no ratio is claimed.

The KD arm (``--kd-alpha``; 0 = SFT only): where the teacher returns top-k logprobs, its annotations are asked
for with them, ``distill.align.build_kd_targets`` aligns them to the student's tokens of each example, and the
trainer adds ``kd_alpha`` x KL at the aligned positions (``distill.loss``). Every alpha of a seed trains
on the same examples, mask table, class balance, steps and recipe, all unpacked (KD refuses packing), so KD -
SFT is a paired difference on the same val posts. Beside the task score, each student's held-out teacher NLL:
the mean negative log-likelihood of the teacher's answers (label word and end of turn) on teacher-annotated
posts that no student trained or validated on, with a bootstrap interval (its exp is the perplexity per answer).

Two teachers: the embedded SmolLM2 (``transformers serve`` on loopback) and the reference teacher
(TF-IDF+LR on gold train), not an LLM (``devtools.reference_teacher``): a teacher of known skill, fitted on
gold train posts other than the ones it annotates, to measure how much of a teacher's skill the pipeline
transfers.

    .venv/bin/python -m bench.distillation_efficacy               # CPU: the required grid; GPU: the full grid
    .venv/bin/python -m bench.distillation_efficacy --teachers reference --sizes 250 --seeds 0 --modes none
    .venv/bin/python -m bench.distillation_efficacy --teachers reference --sizes 250 --modes none --kd-alpha 0 0.5
    .venv/bin/python -m bench.distillation_efficacy --task btc --teachers reference --val-posts 300 --append
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from bench.efficacy_page import body as format_2_body
from bench.efficacy_page import ci as _ci
from bench.efficacy_tasks import BENCH_TASKS, SPLITS, BenchTask, Prediction
from devtools.reference_teacher import NAME as REFERENCE_NAME
from devtools.reference_teacher import ReferenceTeacher
from opengrok_dagster.collect.client import ClientLimits, TeacherEndpoint
from opengrok_dagster.collect.result import SamplingParams
from opengrok_dagster.distill.align import build_kd_targets
from opengrok_dagster.evaluation.api import ApiModel
from opengrok_dagster.evaluation.bootstrap import (
    Distribution,
    Estimate,
    bootstrap,
    holm_family,
    paired_difference,
    pooled_over_seeds,
    resample_indices,
    seed_draws,
)
from opengrok_dagster.evaluation.local import LocalStudent, model_identity, read_checkpoint
from opengrok_dagster.masks.builder import build_mask_table
from opengrok_dagster.masks.config import MaskConfig
from opengrok_dagster.masks.linguistics import load_spacy
from opengrok_dagster.offline_model import MODEL_NAME, check_offline_model, offline_model_dir
from opengrok_dagster.partitions import MASK_MODES
from opengrok_dagster.posts.leaks import leak_counts, normalise_post
from opengrok_dagster.tasks.datasets import resolve_data_dir
from opengrok_dagster.tasks.formats import Annotation
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.data import balance_classes
from opengrok_dagster.training.device import resolve_placement
from opengrok_dagster.training.job import TrainingJob
from opengrok_dagster.training.trainer import train_lora


ROOT = Path(__file__).resolve().parent.parent
TASK = "tweeteval_sentiment"  # the default task; ``--task btc`` measures NER (bench.efficacy_tasks)
VALIDATION_POSTS = 32  # teacher-annotated posts outside every N, for the trainer's validation loss
NLL = "teacher_nll"  # mean NLL of the teacher's answers on the held-out annotated posts
TOP_LOGPROBS = 5  # alternatives per teacher token for the KD arm (xAI returns up to 8, OpenAI 20)
EMBEDDED_NAME = "embedded teacher (SmolLM2-135M-Instruct via transformers serve)"
# Mask variants (``--strengths``): today's default tables, a lighter mask (less random masking, higher keep
# probability), and for each scope (the post only, the whole prompt; the answer never masked) exactly 5, 10, 20 or
# 40% of the scope's tokens masked, lowest p first, with the random control at the same share ("random-...").
STRENGTHS = {
    "default": MaskConfig(),
    "light": MaskConfig(delta=0.0, random_mask_rate=0.05),
    **{
        f"{prefix}{scope}-{percent}": MaskConfig(scope=scope, strength=percent / 100, selection=selection)
        for scope in ("post", "prompt")
        for percent in (5, 10, 20, 40)
        for prefix, selection in (("", "features"), ("random-", "random"))
    },
}
# The pipeline's defaults (rank 16, lr 1e-3, balanced classes: docs/efficacy.md, "Settings search"), run for one
# whole epoch of whatever N gives, or the grid's step budget where that is shorter (``Grid.max_steps``).
RECIPE = TrainingConfig(num_epochs=1.0, max_steps=-1, eval_steps=16, save_steps=16, early_stopping_patience=4)


@dataclass(frozen=True)
class Grid:
    teachers: tuple[str, ...]
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    modes: tuple[str, ...]
    strengths: tuple[str, ...]
    val_posts: int
    kd_alphas: tuple[float, ...] = (0.0, 0.5)  # 0 = SFT only; each alpha > 0 is paired with it
    kd_temperature: float = 1.0
    held_out_posts: int = 200  # teacher-annotated posts no student sees, for the held-out teacher NLL (0 = none)
    max_steps: int = -1  # optimizer steps per training at most; -1 = one whole epoch of the balanced examples
    learning_rate: float = RECIPE.learning_rate  # per mode, chosen on the tuning split (--split tuning)

    @property
    def recipe(self) -> TrainingConfig:
        return RECIPE.model_copy(update={"learning_rate": self.learning_rate})


# The CPU preset is the required grid sized to fit an hour on 2 cores: every training stops after 64 steps
# (512 examples: one epoch at N = 250, a part of one at N = 1,000, so N varies the data at a fixed compute), SFT
# only and no held-out NLL (the KD arm and the strength sweep have their own commands: docs/efficacy.md).
GRIDS = {
    "cpu": Grid(
        ("reference", "embedded"), (250, 1000), (0, 1), ("none", "hard"), ("default",), 600, (0.0,), 1.0, 0, 64
    ),
    "gpu": Grid(("reference", "embedded"), (250, 1000, 4000), (0, 1, 2), MASK_MODES, ("default", "light"), 2000),
    # The mask where it could help (issue 26): 5 seeds, mode none, the random control, soft and hard at one scope
    # and strength (choose them on the tuning split first: --split tuning --strengths post-5 post-10 ...).
    "mask": Grid(
        ("reference",),
        (250,),
        (0, 1, 2, 3, 4),
        ("none", "hard", "soft"),
        ("post-20", "random-post-20"),
        0,
        (0.0,),
        1.0,
        0,
        64,
    ),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Teacher:
    name: str  # the name every figure carries
    model: ApiModel
    stop: callable
    without_logprobs: str | None = None  # why its answers carry no logprobs (then its KD arm is not run)


def start_teacher(kind: str, task: BenchTask, exclude: frozenset[str]) -> Teacher:
    if kind == "reference":
        server = ReferenceTeacher.fit(exclude=exclude, tasks=(task.name,)).start()
        log(server.describe())
        endpoint = TeacherEndpoint(server.base_url, "reference-teacher", None, label="reference")
        limits = ClientLimits(max_concurrency=16, max_attempts=2, timeout_s=30)
        return Teacher(REFERENCE_NAME, ApiModel("reference", lambda: endpoint, REFERENCE_NAME, limits), server.stop)
    from resources import TeacherResource

    resource = TeacherResource(mode="embedded", max_concurrency=16, max_tokens=task.answer_tokens)
    return Teacher(
        EMBEDDED_NAME,
        ApiModel("embedded", resource.endpoint, EMBEDDED_NAME),
        lambda: resource.teardown_after_execution(None),
        "it answers in free text ('The sentiment of this post is negative.'), which training rewrites into the "
        "task's answer ('negative'), so its logprobs (the embedded teacher returns them when asked) describe "
        "another text than the one trained on",
    )


def annotate(
    teacher: Teacher, task: BenchTask, posts: list[str], top_logprobs: int | None = None
) -> tuple[list[Annotation], list[str | None]]:
    """The teacher's parsed answer per post (``reason`` set where unusable), asked exactly as the evaluation asks,
    and each answer's logprobs (JSON of ``choices[0].logprobs.content``; None unless ``top_logprobs`` is set)."""
    started = time.monotonic()
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=task.answer_tokens, top_logprobs=top_logprobs)
    results = teacher.model.results([task.format.messages(post) for post in posts], sampling)
    parsed = [task.format.parse(result.text if result.ok else None, post) for result, post in zip(results, posts)]
    log(
        f"{teacher.name}: {len(posts)} posts answered in {time.monotonic() - started:.0f}s, "
        f"{sum(a.reason is None for a in parsed)} usable"
    )
    return parsed, [result.logprobs if result.ok else None for result in results]


def usable(annotations: list[Annotation]) -> np.ndarray:
    return np.array([a.reason is None for a in annotations], dtype=bool)


def examples_frame(
    task: BenchTask,
    posts: list[str],
    annotations: list[Annotation],
    split: str,
    prefix: str,
    logprobs: list[str | None] | None = None,
) -> pd.DataFrame:
    """Training examples in the mask builder's input shape: the evaluation's messages, the teacher's answer (as the
    task's format writes it), and the teacher's logprobs of that answer (the ``responses`` ``build_kd_targets``
    aligns)."""
    rows = []
    for index, (post, annotation) in enumerate(zip(posts, annotations)):
        system, user = task.format.messages(post)
        rows.append(
            {
                "example_id": f"{prefix}{index:05d}",
                "split": split,
                "system_prompt": system["content"],
                "prompt": user["content"],
                "response": task.format.answer(annotation),
                "class_label": task.class_label(annotation),  # what the trainer balances classes by
                "post_text": post,  # where the post lies in the prompt (mask scope "post")
            }
        )
    frame = pd.DataFrame(rows)
    # object, not pandas' str dtype, so an answer without logprobs stays None (build_kd_targets skips it)
    frame["logprobs"] = pd.Series(logprobs if logprobs is not None else [None] * len(frame), dtype=object)
    return frame


class MeanScores:
    """The mean of a per-item value (the NLL of the teacher's answer) as a bootstrappable score."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=float)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        return {NLL: float((self.values if idx is None else self.values[idx]).mean())}


def teacher_nll(label_logprobs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per usable held-out post, minus the student's log-likelihood of the teacher's answer."""
    usable = np.flatnonzero(labels >= 0)
    return -label_logprobs[usable, labels[usable]]


def masked_share(table: pd.DataFrame) -> float:
    """Share of content (non-template) tokens the hard mask hides."""
    masked = content = 0
    for m, template in zip(table["m"], table["template_token"]):
        content_tokens = ~np.asarray(template, dtype=bool)
        content += int(content_tokens.sum())
        masked += int((np.asarray(m)[content_tokens] == 0).sum())
    return masked / content if content else float("nan")


def estimate_dict(estimate: Estimate) -> dict:
    return {"value": estimate.value, "low": estimate.low, "high": estimate.high}


def difference_dict(difference) -> dict:
    return {"value": difference.value, "low": difference.low, "high": difference.high, "p_value": difference.p_value}


def transfer_ratio(
    student: Distribution, base: Distribution, teacher: Distribution, metric: str, level: float = 0.95
) -> dict:
    """(student - base) / (teacher - base) on the full sample and per resample (paired); resamples where the teacher
    is no better than the base are left out of the interval, and counted."""
    gain = teacher.samples[metric] - base.samples[metric]
    usable = gain > 0
    ratios = (student.samples[metric][usable] - base.samples[metric][usable]) / gain[usable]
    point_gain = teacher.point[metric] - base.point[metric]
    value = (student.point[metric] - base.point[metric]) / point_gain if point_gain > 0 else float("nan")
    low, high = (
        np.percentile(ratios, [100 * (1 - level) / 2, 100 * (1 + level) / 2]) if ratios.size else (np.nan, np.nan)
    )
    return {"value": value, "low": float(low), "high": float(high), "resamples_left_out": int((~usable).sum())}


def steps_within_budget(table: pd.DataFrame, config: TrainingConfig, budget: int) -> int:
    """``max_steps`` for one training: one epoch of the train split as the trainer balances it, or ``budget``
    steps where that is fewer (-1, the trainer's whole ``num_epochs``, when there is no budget). transformers'
    ``max_steps`` overrides the epochs, so a budget alone would repeat a small N's examples until it is spent."""
    if budget < 1:
        return -1
    train = balance_classes(table, table["class_label"], config.seed, config.balance_min_class_examples)
    return min(budget, math.ceil(int((train["split"] == "train").sum()) / config.batch_size))


def arm_config(config: TrainingConfig, seed: int, kd_alpha: float, kd_temperature: float) -> TrainingConfig:
    """One arm's recipe: the same for SFT only and SFT + KD but the KD weight, unpacked for both (KD refuses
    packing, so the SFT arm must not differ by it)."""
    return config.model_copy(
        update={"seed": seed, "kd_alpha": kd_alpha, "kd_temperature": kd_temperature, "packing": False}
    )


def train_cell(
    model_path: str,
    table: pd.DataFrame,
    mode: str,
    directory: Path,
    config: TrainingConfig,
    placement,
    kd_targets: pd.DataFrame | None = None,
):
    job = TrainingJob(
        mode, model_path, directory / mode, config, placement, data_versions={"bench": "distillation_efficacy"}
    )
    started = time.monotonic()
    outcome = train_lora(job, table, log=lambda message: None, kd_targets=kd_targets)
    log(
        f"trained {mode} (kd_alpha {config.kd_alpha}): {outcome.train_examples} examples, {outcome.global_step} "
        f"steps, val loss {outcome.best_val_loss:.3f}, {time.monotonic() - started:.0f}s"
    )
    return outcome, time.monotonic() - started


def git_commit() -> str:
    described = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    return described.stdout.strip() or "unknown"


@dataclass(frozen=True)
class Measured:
    """One student's scores: the val metric under each scoring, the held-out teacher NLL (bootstrapped), its val
    predictions."""

    scores: dict[str, Distribution]
    nll: Distribution | None  # None when the grid holds no held-out posts
    prediction: Prediction


def scored(task: BenchTask, prediction: Prediction, indices: np.ndarray) -> dict[str, Distribution]:
    """Every scoring of one model's val predictions, bootstrapped on the shared resamples."""
    return {name: bootstrap(task.scores(predicted), indices) for name, predicted in prediction.scorings.items()}


def per_class(task: BenchTask, prediction: Prediction, scores: dict[str, Distribution]) -> dict:
    """Per scoring: each class's recall (label tasks) and the predicted counts per class, beside macro recall."""
    return {
        name: {
            "recall": {
                key.removeprefix("recall:"): value
                for key, value in scores[name].point.items()
                if key.startswith("recall:")
            },
            "predicted_counts": task.counts(predicted),
        }
        for name, predicted in prediction.scorings.items()
    }


def estimates(scores: dict[str, Distribution], metric: str) -> dict:
    return {name: estimate_dict(distribution.estimate(metric)) for name, distribution in scores.items()}


def differences(a: dict[str, Distribution], b: dict[str, Distribution] | None, metric: str) -> dict | None:
    """``a - b`` under every scoring both have (paired on the same resamples); None without ``b``."""
    if b is None:
        return None
    return {name: difference_dict(paired_difference(a[name], b[name], metric)) for name in a if name in b}


@dataclass
class Bench:
    """What every cell of a run shares: the task, the student, the val resamples, the held-out posts, the base."""

    task: BenchTask
    model_path: str
    placement: object
    indices: np.ndarray
    threads: int
    tokenizer: object
    nlp: object
    held_out: list  # the held-out annotated posts' messages (label tasks with held-out posts)
    base: dict[str, Distribution] | None = None

    def predict(self, student: LocalStudent, variant: str) -> Prediction:
        started = time.monotonic()
        prediction = self.task.predict(student, variant, self.held_out)
        log(
            f"{variant}: scored {len(self.task.val_texts)} val and {len(self.held_out)} held-out posts in "
            f"{time.monotonic() - started:.0f}s"
        )
        return prediction

    def measure(self, student: LocalStudent, variant: str, held_labels: np.ndarray | None, held_indices) -> Measured:
        prediction = self.predict(student, variant)
        nll = None
        if held_indices is not None:
            nll = bootstrap(MeanScores(teacher_nll(prediction.held, held_labels)), held_indices)
        return Measured(scored(self.task, prediction, self.indices), nll, prediction)


def split_pool(pool: list[str], largest: int) -> tuple[slice, slice, slice]:
    """Train posts (the first ``largest``; every N draws from them), validation posts, held-out posts."""
    return slice(0, largest), slice(largest, largest + VALIDATION_POSTS), slice(largest + VALIDATION_POSTS, len(pool))


def paired(a: Distribution | None, b: Distribution | None, metric: str) -> dict | None:
    return difference_dict(paired_difference(a, b, metric)) if a is not None and b is not None else None


def run(grid: Grid, args, command: str, task_name: str = TASK) -> dict:
    data_dir = resolve_data_dir()
    if data_dir is None:
        raise SystemExit("no data directory: set OPENGROK_DATA_DIR to a folder laid out like shared/data")
    model_path = str(check_offline_model(offline_model_dir()))
    placement = resolve_placement("auto", "auto")
    task = BENCH_TASKS[task_name](data_dir, grid.val_posts, getattr(args, "split", "reporting"))
    metric, headline = task.metric, getattr(args, "scoring", None) or task.scorings[0]
    if headline not in task.scorings:
        raise SystemExit(f"--scoring {headline}: task {task.name} is scored {', '.join(task.scorings)}; choose one")
    leaks = task.eval_posts.matches(task.train_texts)
    unique = list(dict.fromkeys(t for t, leak in zip(task.train_texts, leaks) if leak is None))
    wanted = max(grid.sizes) + VALIDATION_POSTS + grid.held_out_posts
    pool = [unique[i] for i in np.random.default_rng(1234).permutation(len(unique))[:wanted]]
    train_part, validation_part, held_part = split_pool(pool, max(grid.sizes))
    log(
        f"{len(pool)} posts to annotate from {task.train_source} "
        f"({len(task.train_texts) - len(unique)} dropped as duplicates, eval posts or near-duplicates of them: "
        f"{leak_counts(leaks)})"
    )
    bench = Bench(
        task,
        model_path,
        placement,
        resample_indices(len(task.val_texts), args.resamples, 0),
        args.threads,
        AutoTokenizer.from_pretrained(model_path),
        load_spacy(MaskConfig().spacy_model),
        task.held_out_messages(pool[held_part]),
    )
    base_prediction = bench.predict(LocalStudent(model_path, threads=args.threads), LocalStudent.BASE)
    bench.base = base = scored(task, base_prediction, bench.indices)
    result = {
        "format": 2,  # every scoring per model, seed-hierarchical intervals, Holm families, tuning/reporting splits
        "task": task.name,
        "metric": metric,
        "val_posts": len(task.val_texts),
        "val_source": task.val_source,
        "splits": task.splits,
        "train_posts_left_out_as_eval_posts": leak_counts(leaks),  # exact and near-duplicate, before annotation
        "scorings": list(task.scorings),
        "headline_scoring": headline,
        "command": command,
        "commit": git_commit(),
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "device": placement.description,
        "load_average_before": os.getloadavg()[0],
        "grid": asdict(grid),
        "recipe": grid.recipe.model_dump(),
        "class_balance": task.balances_classes,
        "scoring": task.scoring,
        "count_names": task.count_names,
        "base": {"scores": estimates(base, metric), "per_class": per_class(task, base_prediction, base)},
        "teachers": {},
        "cells": [],
        "summary": [],
        "families": [],
    }
    draws = seed_draws(len(grid.seeds), args.resamples, 2)
    wants_kd = any(alpha > 0 for alpha in grid.kd_alphas)
    for kind in grid.teachers:
        teacher = start_teacher(kind, task, frozenset(normalise_post(t) for t in pool))
        top_logprobs = TOP_LOGPROBS if wants_kd and teacher.without_logprobs is None else None
        try:
            teacher_val, _ = annotate(teacher, task, task.val_texts)
            annotations, logprobs = annotate(teacher, task, pool, top_logprobs)
        finally:
            teacher.stop()
        teacher_prediction = Prediction({"generated": task.teacher_predictions(teacher_val)})
        teacher_scores = scored(task, teacher_prediction, bench.indices)
        # the embedded teacher serves the offline model, the student's own base checkpoint
        self_distillation = kind == "embedded" and model_identity(MODEL_NAME) == model_identity(model_path)
        ok = usable(annotations)
        held_labels = task.label_index(annotations[held_part]) if bench.held_out else None
        if held_labels is not None and not (held_labels >= 0).any():
            raise SystemExit(f"{teacher.name} answered none of the {len(held_labels)} held-out posts usably")
        held_indices = resample_indices(int((held_labels >= 0).sum()), args.resamples, 1) if bench.held_out else None
        base_nll = (
            bootstrap(MeanScores(teacher_nll(base_prediction.held, held_labels)), held_indices)
            if held_indices is not None
            else None
        )
        alphas = grid.kd_alphas if top_logprobs else tuple(alpha for alpha in grid.kd_alphas if alpha == 0)
        if alphas != grid.kd_alphas:
            log(f"{teacher.name}: no KD arm, {teacher.without_logprobs}")
        result["teachers"][kind] = {
            "name": teacher.name,
            "self_distillation": self_distillation,
            "scores": estimates(teacher_scores, metric),
            "per_class": per_class(task, teacher_prediction, teacher_scores),
            "val_unparseable": float((~usable(teacher_val)).mean()),
            "annotated": len(pool),
            "usable": int(ok.sum()),
            "label_counts": task.annotation_counts(annotations),
            "held_out_posts": len(held_labels) if held_labels is not None else 0,
            "held_out_usable": int((held_labels >= 0).sum()) if held_labels is not None else 0,
            "base_nll": estimate_dict(base_nll.estimate(NLL)) if base_nll else None,
            "top_logprobs": top_logprobs,
            "kd_arm": None if top_logprobs or not wants_kd else f"not run: {teacher.without_logprobs}",
        }
        write_outputs(result, args, partial=True)
        validation = examples_frame(
            task, pool[validation_part], annotations[validation_part], "validation", "v", logprobs[validation_part]
        )[ok[validation_part]]
        versus_teacher = None if self_distillation else teacher_scores
        for size in grid.sizes:
            by_cell: dict[tuple[str, str, float], list[Measured]] = {}
            for seed in grid.seeds:
                chosen = np.random.default_rng(seed).permutation(len(pool[train_part]))[:size]
                chosen = chosen[ok[chosen]]
                train = examples_frame(
                    task,
                    [pool[i] for i in chosen],
                    [annotations[i] for i in chosen],
                    "train",
                    "t",
                    [logprobs[i] for i in chosen],
                )
                examples = pd.concat([train, validation], ignore_index=True)
                for cell, measured in seed_cells(bench, grid, examples, seed, alphas, held_labels, held_indices):
                    cell.update(teacher=kind, n=size, seed=seed)
                    cell["transfer_ratio"] = teacher_transfer(measured.scores, base, versus_teacher, metric)
                    result["cells"].append(cell)
                    by_cell.setdefault((cell["mode"], cell["strength"], cell["kd_alpha"]), []).append(measured)
                    write_outputs(result, args, partial=True)
            rows, family = summary_rows(by_cell, base, versus_teacher, kind, size, metric, draws, headline)
            result["summary"] += rows
            result["families"].append(family)
            write_outputs(result, args, partial=True)
    result["load_average_after"] = os.getloadavg()[0]
    return result


def teacher_transfer(student: dict, base: dict, teacher: dict | None, metric: str) -> dict | None:
    """The transfer ratio on the one scoring the teacher has (generation); None for self-distillation, where the
    teacher is the base checkpoint itself and no student-versus-teacher claim is made."""
    if teacher is None:
        return None
    return transfer_ratio(student["generated"], base["generated"], teacher["generated"], metric) | {
        "scoring": "generated"
    }


def seed_cells(bench: Bench, grid: Grid, examples: pd.DataFrame, seed: int, alphas, held_labels, held_indices):
    """Train and score every (strength, mode, kd_alpha) of one seed's examples; yields (cell record, scores).

    Each KD arm trains on exactly the SFT arm's table (same mask, class balance, steps and recipe) and is paired
    with it; each masked mode is paired with the same seed's and alpha's mode-none student.
    """
    tokenizer, metric = bench.tokenizer, bench.task.metric
    unmasked: dict[float, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="efficacy-") as scratch:
        for strength in grid.strengths:
            mask = build_mask_table(
                examples, tokenizer, bench.nlp, STRENGTHS[strength].model_copy(update={"seed": seed})
            ).table
            share = masked_share(mask[mask["split"] == "train"])
            kd = build_kd_targets(mask, examples, tokenizer) if any(alpha > 0 for alpha in alphas) else None
            if kd is not None:
                log(f"kd_targets: {kd.aligned_share:.1%} of response tokens aligned ({kd.rows_with_logprobs} rows)")
            for mode in grid.modes:
                if mode == "none" and strength != grid.strengths[0]:
                    continue  # mode none ignores the mask: one run covers every strength
                sft = None
                for alpha in alphas:
                    config = arm_config(grid.recipe, seed, alpha, grid.kd_temperature)
                    config = config.model_copy(update={"max_steps": steps_within_budget(mask, config, grid.max_steps)})
                    directory = Path(scratch) / strength / f"kd{alpha:g}"
                    targets = kd.table if alpha > 0 else None
                    outcome, seconds = train_cell(
                        bench.model_path, mask, mode, directory, config, bench.placement, targets
                    )
                    checkpoint = read_checkpoint(directory / mode, mode)
                    student = LocalStudent(bench.model_path, [checkpoint], threads=bench.threads)
                    measured = bench.measure(student, checkpoint.variant, held_labels, held_indices)
                    del student
                    if alpha == 0:
                        sft = measured
                    if mode == "none":
                        unmasked[alpha] = measured
                    versus_none = unmasked.get(alpha) if mode != "none" else None
                    yield (
                        {
                            "mode": mode,
                            "strength": strength if mode != "none" else "-",
                            "kd_alpha": alpha,
                            "kd_temperature": grid.kd_temperature if alpha > 0 else None,
                            "kd_aligned_share": kd.aligned_share if kd is not None and alpha > 0 else None,
                            "masked_share": share if mode != "none" else 0.0,
                            "train_examples_balanced": outcome.train_examples,
                            "steps": outcome.global_step,
                            "train_seconds": round(seconds),
                            "student": estimates(measured.scores, metric),
                            "per_class": per_class(bench.task, measured.prediction, measured.scores),
                            "difference": differences(measured.scores, bench.base, metric),
                            "minus_none": differences(measured.scores, versus_none and versus_none.scores, metric),
                            "teacher_nll": estimate_dict(measured.nll.estimate(NLL)) if measured.nll else None,
                            "kd_minus_sft": differences(measured.scores, sft.scores, metric)
                            if alpha > 0 and sft
                            else None,
                            "nll_kd_minus_sft": paired(measured.nll, sft.nll, NLL) if alpha > 0 and sft else None,
                        },
                        measured,
                    )


def _key_name(mode: str, strength: str, alpha: float) -> str:
    return mode + (f" ({strength})" if strength != "-" else "") + (f" + KD {alpha:g}" if alpha else "")


def summary_rows(
    by_cell: dict,
    base: dict[str, Distribution],
    teacher: dict[str, Distribution] | None,
    kind: str,
    size: int,
    metric: str,
    draws: np.ndarray,
    headline: str,
) -> tuple[list[dict], dict]:
    """The seed-pooled students of one (teacher, N), with seed-hierarchical intervals (seeds resampled by
    ``draws``, then posts): score and gain over the base under every scoring, masked - none and KD - SFT paired by
    seed, transfer ratio (None for self-distillation), held-out teacher NLL; and the Holm family of every
    comparison made, in the headline scoring."""
    pooled = {
        key: {s: pooled_over_seeds([m.scores[s] for m in cells], draws) for s in cells[0].scores}
        for key, cells in by_cell.items()
    }
    nll = {
        key: pooled_over_seeds([m.nll for m in cells], draws)
        for key, cells in by_cell.items()
        if cells[0].nll is not None
    }
    rows, comparisons = [], {}
    for (mode, strength, alpha), cells in by_cell.items():
        key, sft, none = (mode, strength, alpha), (mode, strength, 0.0), ("none", "-", alpha)
        student = pooled[key]
        versus_none = pooled.get(none) if mode != "none" else None
        versus_sft = pooled.get(sft) if alpha > 0 else None
        name = _key_name(mode, strength, alpha)
        comparisons[f"{name} - base"] = (student[headline], base[headline])
        if versus_none is not None:
            comparisons[f"{name} - none"] = (student[headline], versus_none[headline])
        if versus_sft is not None:
            comparisons[f"{name} - SFT only"] = (student[headline], versus_sft[headline])
        rows.append(
            {
                "teacher": kind,
                "n": size,
                "mode": mode,
                "strength": strength,
                "kd_alpha": alpha,
                "seeds": len(cells),
                "interval": "hierarchical: seeds, then posts",
                "base": estimates(base, metric),
                "student": estimates(student, metric),
                "teacher_score": estimates(teacher, metric) if teacher is not None else None,
                "difference": differences(student, base, metric),
                "minus_none": differences(student, versus_none, metric),
                "transfer_ratio": teacher_transfer(student, base, teacher, metric),
                "teacher_nll": estimate_dict(nll[key].estimate(NLL)) if key in nll else None,
                "sft_student": estimates(versus_sft, metric) if versus_sft is not None else None,
                "sft_teacher_nll": estimate_dict(nll[sft].estimate(NLL)) if alpha > 0 and sft in nll else None,
                "kd_minus_sft": differences(student, versus_sft, metric),
                "nll_kd_minus_sft": paired(nll.get(key), nll.get(sft), NLL) if alpha > 0 else None,
            }
        )
    members = holm_family(comparisons, metric) if comparisons else []
    family = {
        "teacher": kind,
        "n": size,
        "scoring": headline,
        "metric": metric,
        "members": [
            {
                "comparison": m.name,
                **difference_dict(m.difference),
                "p_holm": m.p_holm,
                "adjusted_level": m.adjusted_level,
                "adjusted_low": m.adjusted_low,
                "adjusted_high": m.adjusted_high,
            }
            for m in members
        ],
    }
    return rows, family


def _grid_line(grid: dict, partial: bool) -> str:
    kd = (
        f"; KD alphas {', '.join(f'{a:g}' for a in grid['kd_alphas'])} (0 = SFT only), temperature "
        f"{grid['kd_temperature']:g}; {grid['held_out_posts']} held-out annotated posts"
        if "kd_alphas" in grid
        else ""
    )
    return (
        f"Grid: teachers {', '.join(grid['teachers'])}; N {', '.join(map(str, grid['sizes']))}; seeds "
        f"{', '.join(map(str, grid['seeds']))}; modes {', '.join(grid['modes'])}; "
        f"mask strengths {', '.join(grid['strengths'])}{kd}."
        + (
            " **Partial: the run was still going (or stopped) when this was written; only the cells below were"
            " measured.**"
            if partial
            else ""
        )
    )


def kd_lines(result: dict) -> list[str]:
    """The KD arm against SFT only, seed-averaged, on the task score and the held-out teacher NLL (paired)."""
    rows = [row for row in result["summary"] if row.get("kd_alpha")]
    if not rows:
        return []
    lines = [
        "",
        "SFT only vs SFT + KD (seed-averaged, same examples, steps, seeds and recipe, unpacked; paired on the same "
        "val posts and on the same held-out annotated posts; NLL in nats per teacher answer, lower is better):",
        "",
        "| teacher | N | mode | mask strength | seeds | KD alpha | SFT only | SFT + KD | KD - SFT | "
        "teacher NLL, SFT only | teacher NLL, SFT + KD | NLL KD - SFT |",
        "|---|---:|---|---|---:|---:|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['teacher']} | {row['n']} | {row['mode']} | {row['strength']} | {row['seeds']} | "
            f"{row['kd_alpha']:g} | {_ci(row['sft_student'])} | {_ci(row['student'])} | {_ci(row['kd_minus_sft'])} | "
            f"{_ci(row['sft_teacher_nll'])} | {_ci(row['teacher_nll'])} | {_ci(row['nll_kd_minus_sft'])} |"
        )
    return lines


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def base_line(result: dict, counted: str) -> str:
    base = result["base"]
    if base["raw"] is None:  # no calibration (NER)
        return f"Base student: {_ci(base['calibrated'])} ({counted} predicted: {base['predicted_counts']})."
    return (
        f"Base student: {_ci(base['calibrated'])} calibrated ({_ci(base['raw'])} uncalibrated; calibrated predictions "
        f"per class {counted} {base['predicted_counts']})."
    )


def markdown(result: dict, partial: bool) -> str:
    grid, recipe = result["grid"], result["recipe"]
    # runs from before the NER task counted sentiment labels only
    counted = "/".join(word[:3] for word in result.get("count_names", ["negative", "neutral", "positive"]))
    after = f", {result['load_average_after']:.1f} after" if "load_average_after" in result else ""
    lines = [
        f"Task {result['task']} ({result['val_source']}), {result['val_posts']} val posts, metric {result['metric']}; "
        f"95% paired percentile bootstrap intervals on shared resamples. Command `{result['command']}`, commit "
        f"{result['commit']}, started {result['started']} on {result['device']}, load average "
        f"{result['load_average_before']:.1f} before{after}.",
        "",
        _grid_line(grid, partial),
        "",
        "Recipe: "
        + (
            "class-balanced train split (oversampled to the largest class)"
            if result.get("class_balance", True)
            else "the train split as annotated (no classes to balance)"
        )
        + f", LoRA r={result['recipe']['lora_r']}, "
        f"alpha={recipe['lora_alpha']}, lr {recipe['learning_rate']}, {recipe['num_epochs']} epochs"
        + (f" or {grid['max_steps']} steps if fewer" if grid.get("max_steps", -1) > 0 else "")
        + ", "
        f"batch {recipe['batch_size']}, max_length {recipe['max_length']}; scoring: {result['scoring']}.",
        "",
    ]
    if result.get("format") == 2:
        return "\n".join(lines + format_2_body(result, counted)) + "\n"
    lines += [
        base_line(result, counted),
        "",
        f"| teacher | teacher on val | unparseable | annotated posts usable | teacher label counts {counted} | "
        "held-out posts usable | base's held-out teacher NLL | KD arm |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for teacher in result["teachers"].values():
        held = f"{teacher['held_out_usable']} of {teacher['held_out_posts']}" if teacher.get("held_out_posts") else "-"
        kd = teacher.get("kd_arm") or (
            f"top_logprobs {teacher['top_logprobs']}" if teacher.get("top_logprobs") else "-"
        )
        lines.append(
            f"| {teacher['name']} | {_ci(teacher['val'])} | {teacher['val_unparseable']:.3f} | "
            f"{teacher['usable']} of {teacher['annotated']} | {teacher['label_counts']} | {held} | "
            f"{_ci(teacher.get('base_nll'))} | {kd} |"
        )
    lines += [
        "",
        "Mean over seeds (the seed-averaged student on the same resamples):",
        "",
        "| teacher | N | mode | mask strength | KD alpha | seeds | base | student | teacher | student - base | "
        "transfer ratio | held-out teacher NLL |",
        "|---|---:|---|---|---:|---:|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['teacher']} | {row['n']} | {row['mode']} | {row['strength']} | {row.get('kd_alpha', 0):g} | "
            f"{row['seeds']} | {_ci(row['base'])} | {_ci(row['student'])} | {_ci(row['teacher_score'])} | "
            f"{_ci(row['difference'])} | {_ci(row['transfer_ratio'], 2)} | {_ci(row.get('teacher_nll'))} |"
        )
    lines += kd_lines(result)
    lines += [
        "",
        "Every cell:",
        "",
        "| teacher | N | seed | mode | strength | KD alpha | KD aligned share | masked share | balanced examples | "
        f"steps | train s | student | uncalibrated | predicted {counted} | student - base | transfer ratio | "
        "masked - none (same seed) | KD - SFT (same seed) | held-out teacher NLL |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        aligned = f"{c['kd_aligned_share']:.2f}" if c.get("kd_aligned_share") is not None else "-"
        lines.append(
            f"| {c['teacher']} | {c['n']} | {c['seed']} | {c['mode']} | {c['strength']} | {c.get('kd_alpha', 0):g} | "
            f"{aligned} | {c['masked_share']:.2f} | {c['train_examples_balanced']} | {c['steps']} | "
            f"{c['train_seconds']} | {_ci(c['student'])} | {_value(c['student_raw'])} | {c['predicted_counts']} | "
            f"{_ci(c['difference'])} | {_ci(c['transfer_ratio'], 2)} | {_ci(c.get('minus_none'))} | "
            f"{_ci(c.get('kd_minus_sft'))} | {_ci(c.get('teacher_nll'))} |"
        )
    return "\n".join(lines) + "\n"


PAGE_HEADER = """# Distillation efficacy

Written by `bench/distillation_efficacy.py` (`make bench` sections `efficacy` and `efficacy_ner`: `python -m bench
--only efficacy efficacy_ner`). It measures whether distillation teaches the student the SNS task it is scored on
(TweetEval sentiment; named entities of the Broad Twitter Corpus with `--task btc`), and how much of a teacher's
skill it transfers: the transfer ratio is (student - base) / (teacher - base) on the same val posts. The
"reference" teacher is the reference teacher (TF-IDF+LR on gold train), not an LLM: a classifier (for entities a
token tagger) of known skill served over the OpenAI API (`devtools/reference_teacher.py`), fitted on gold train
posts other than those it annotates.
The "embedded" teacher is SmolLM2-135M-Instruct, the offline default. SFT + KD adds the KL to the teacher's top-k
logprobs (token-level distillation) to the same training; SFT only is KD alpha 0. The held-out teacher NLL is the
mean negative log-likelihood (nats) of the teacher's answers on annotated posts no student saw. The figures below
are what the run measured, whatever they show; the JSON beside this page (docs/efficacy.json) holds them all.

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
    parser.add_argument(
        "--task",
        choices=sorted(BENCH_TASKS),
        default=TASK,
        help=f"the task to distil and score (default {TASK}; btc: named entities of the Broad Twitter Corpus)",
    )
    parser.add_argument("--teachers", nargs="+", choices=("reference", "embedded"))
    parser.add_argument("--sizes", nargs="+", type=int, help="numbers N of teacher-annotated posts")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--modes", nargs="+", choices=MASK_MODES)
    parser.add_argument("--strengths", nargs="+", choices=sorted(STRENGTHS))
    parser.add_argument("--val-posts", type=int, help="val posts (sentences, for NER) scored (0 = the whole split)")
    parser.add_argument(
        "--kd-alpha",
        nargs="+",
        type=float,
        help="KD weights to compare (0 = SFT only; default 0 0.5): every alpha > 0 is paired with alpha 0",
    )
    parser.add_argument("--kd-temperature", type=float, help="temperature of the KD arm's KL (default 1)")
    parser.add_argument(
        "--held-out-posts",
        type=int,
        help="teacher-annotated posts no student sees, for the held-out teacher NLL (0 = none)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help="optimizer steps per training at most (-1 = one whole epoch of the balanced split)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="reporting",
        help="which part of the val split to score: 'tuning' (70%%, to choose recipes on) or 'reporting' (the "
        "other 30%%, to report on; default)",
    )
    parser.add_argument(
        "--scoring",
        choices=("generated", "calibrated", "raw"),
        default="generated",
        help="headline scoring (every scoring is recorded; default generated, the one the teacher has too)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        help=f"the recipe's learning rate (default {RECIPE.learning_rate:g}); choose it per mode on --split tuning",
    )
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads for the local models (0 = torch's default)"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "efficacy.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "efficacy.json")
    parser.add_argument("--append", action="store_true", help="keep the runs already in --json and add this one")
    args = parser.parse_args()
    if args.kd_alpha and min(args.kd_alpha) < 0:
        parser.error(f"--kd-alpha {min(args.kd_alpha):g}: a KD weight is 0 (SFT only) or more")
    if args.kd_temperature is not None and args.kd_temperature <= 0:
        parser.error(f"--kd-temperature {args.kd_temperature:g}: the temperature must be above 0")
    if args.held_out_posts is not None and args.held_out_posts < 0:
        parser.error(f"--held-out-posts {args.held_out_posts}: a number of posts is 0 (no held-out NLL) or more")
    if args.max_steps is not None and (args.max_steps == 0 or args.max_steps < -1):
        parser.error(f"--max-steps {args.max_steps}: a number of optimizer steps, or -1 for one whole epoch")
    if args.learning_rate is not None and args.learning_rate <= 0:
        parser.error(f"--learning-rate {args.learning_rate:g}: a learning rate is above 0")
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    preset = GRIDS[args.grid or ("gpu" if torch.cuda.is_available() else "cpu")]
    if not BENCH_TASKS[args.task].kd_arm:
        if args.kd_alpha and max(args.kd_alpha) > 0:
            parser.error(f"--kd-alpha above 0 with --task {args.task}: the KD arm is measured on label tasks only")
        preset = replace(preset, kd_alphas=(0.0,), held_out_posts=0)
    grid = Grid(
        *(
            getattr(args, name) or getattr(preset, name)
            for name in ("teachers", "sizes", "seeds", "modes", "strengths")
        ),
        preset.val_posts if args.val_posts is None else args.val_posts,
        tuple(dict.fromkeys(args.kd_alpha)) if args.kd_alpha else preset.kd_alphas,
        preset.kd_temperature if args.kd_temperature is None else args.kd_temperature,
        preset.held_out_posts if args.held_out_posts is None else args.held_out_posts,
        preset.max_steps if args.max_steps is None else args.max_steps,
        preset.learning_rate if args.learning_rate is None else args.learning_rate,
    )
    if any(alpha > 0 for alpha in grid.kd_alphas) and grid.held_out_posts == 0:
        parser.error("--kd-alpha above 0 needs --held-out-posts above 0: the KD arm is judged on held-out NLL")
    args.earlier = earlier_runs(args.json) if args.append else []
    command = "python -m bench.distillation_efficacy " + shlex.join(sys.argv[1:])
    result = run(grid, args, command.strip(), args.task)
    write_outputs(result, args, partial=False)
    print(markdown(result, partial=False))


if __name__ == "__main__":
    main()
