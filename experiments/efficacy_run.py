"""One run of the efficacy experiment over its grid: the posts to annotate (eval posts left out), the base scored
once, then per teacher its annotations, and per N and seed the cells (``efficacy_cells``), pooled over seeds
(``efficacy_stats``); the record is rewritten after every cell (``efficacy_page``)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from experiments.efficacy_cells import Study, examples_frame, log, seed_cells
from experiments.efficacy_grid import TASK, Grid
from experiments.efficacy_page import write_outputs
from experiments.efficacy_stats import (
    NLL,
    MeanScores,
    Measured,
    estimate_dict,
    estimates,
    per_class,
    scored,
    summary_rows,
    teacher_nll,
    teacher_transfer,
)
from experiments.efficacy_tasks import EFFICACY_TASKS, EfficacyTask, Prediction
from opengrok_dagster.collect.client import ClientLimits, TeacherEndpoint
from opengrok_dagster.collect.result import SamplingParams
from opengrok_dagster.evaluation.api import ApiModel
from opengrok_dagster.evaluation.bootstrap import bootstrap, resample_indices, seed_draws
from opengrok_dagster.evaluation.local import LocalStudent, model_identity
from opengrok_dagster.masks.config import MaskConfig
from opengrok_dagster.masks.linguistics import load_spacy
from opengrok_dagster.offline.reference_teacher import NAME as REFERENCE_NAME
from opengrok_dagster.offline.reference_teacher import ReferenceTeacher
from opengrok_dagster.offline_model import MODEL_NAME, check_offline_model, offline_model_dir
from opengrok_dagster.posts.leaks import leak_counts, normalise_post
from opengrok_dagster.tasks.datasets import resolve_data_dir
from opengrok_dagster.tasks.formats import Annotation
from opengrok_dagster.training.device import resolve_placement


ROOT = Path(__file__).resolve().parent.parent
VALIDATION_POSTS = 32  # teacher-annotated posts outside every N, for the trainer's validation loss
TOP_LOGPROBS = 5  # alternatives per teacher token for the KD arm (xAI returns up to 8, OpenAI 20)
EMBEDDED_NAME = "embedded teacher (SmolLM2-135M-Instruct via transformers serve)"


@dataclass
class Teacher:
    name: str  # the name every figure carries
    model: ApiModel
    stop: callable
    without_logprobs: str | None = None  # why its answers carry no logprobs (then its KD arm is not run)


def start_teacher(kind: str, task: EfficacyTask, exclude: frozenset[str]) -> Teacher:
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
    teacher: Teacher, task: EfficacyTask, posts: list[str], top_logprobs: int | None = None
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


def git_commit() -> str:
    described = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    return described.stdout.strip() or "unknown"


def split_pool(pool: list[str], largest: int) -> tuple[slice, slice, slice]:
    """Train posts (the first ``largest``; every N draws from them), validation posts, held-out posts."""
    return slice(0, largest), slice(largest, largest + VALIDATION_POSTS), slice(largest + VALIDATION_POSTS, len(pool))


@dataclass(frozen=True)
class Annotated:
    """One teacher's annotations of the pool, and what every cell trained on them shares."""

    kind: str
    annotations: list[Annotation]
    logprobs: list[str | None]
    usable: np.ndarray
    validation: pd.DataFrame  # the usable validation examples, the same for every N and seed
    alphas: tuple[float, ...]  # the grid's KD weights this teacher can run (0 only without logprobs)
    held_labels: np.ndarray | None  # the teacher's answer per held-out post (-1: unusable); None without any
    held_indices: np.ndarray | None  # bootstrap resamples of the usable held-out posts
    versus_teacher: dict | None  # the teacher's scores; None for self-distillation (no transfer ratio)


def run(grid: Grid, args, command: str, task_name: str = TASK) -> dict:
    """Every cell of the grid, teacher by teacher; the record is rewritten (as partial) after each step."""
    study, pool, left_out = start_study(grid, args, task_name)
    result = run_record(study, grid, command, left_out)
    draws = seed_draws(len(grid.seeds), args.resamples, 2)
    for kind in grid.teachers:
        annotated = annotate_pool(study, grid, args, kind, pool, result)
        write_outputs(result, args, partial=True)
        for size in grid.sizes:
            by_cell = train_size(study, grid, args, pool, annotated, size, result)
            rows, family = summary_rows(
                by_cell, study.base, annotated.versus_teacher, kind, size, study.task.metric, draws, study.headline
            )
            result["summary"] += rows
            result["families"].append(family)
            write_outputs(result, args, partial=True)
    result["load_average_after"] = os.getloadavg()[0]
    return result


def start_study(grid: Grid, args, task_name: str) -> tuple[Study, list[str], dict]:
    """The task, the student and the posts to annotate (with the counts of train posts left out as eval posts); the
    base scored once."""
    data_dir = resolve_data_dir()
    if data_dir is None:
        raise SystemExit("no data directory: set OPENGROK_DATA_DIR to a folder laid out like shared/data")
    model_path = str(check_offline_model(offline_model_dir()))
    placement = resolve_placement("auto", "auto")
    task = EFFICACY_TASKS[task_name](data_dir, grid.val_posts, getattr(args, "split", "reporting"))
    headline = getattr(args, "scoring", None) or task.scorings[0]
    if headline not in task.scorings:
        raise SystemExit(f"--scoring {headline}: task {task.name} is scored {', '.join(task.scorings)}; choose one")
    pool, left_out = draw_pool(task, grid)
    _, _, held_part = split_pool(pool, max(grid.sizes))
    study = Study(
        task,
        model_path,
        placement,
        resample_indices(len(task.val_texts), args.resamples, 0),
        args.threads,
        AutoTokenizer.from_pretrained(model_path),
        load_spacy(MaskConfig().spacy_model),
        task.held_out_messages(pool[held_part]),
        headline,
    )
    study.base_prediction = study.predict(LocalStudent(model_path, threads=args.threads), LocalStudent.BASE)
    study.base = scored(task, study.base_prediction, study.indices)
    return study, pool, left_out


def draw_pool(task: EfficacyTask, grid: Grid) -> tuple[list[str], dict]:
    """The gold train split's texts to annotate, in a seeded order (duplicates and eval posts, exact or near, left
    out), as many as the largest N, the validation and the held-out posts need; and the counts left out."""
    leaks = task.eval_posts.matches(task.train_texts)
    unique = list(dict.fromkeys(t for t, leak in zip(task.train_texts, leaks) if leak is None))
    wanted = max(grid.sizes) + VALIDATION_POSTS + grid.held_out_posts
    pool = [unique[i] for i in np.random.default_rng(1234).permutation(len(unique))[:wanted]]
    log(
        f"{len(pool)} posts to annotate from {task.train_source} "
        f"({len(task.train_texts) - len(unique)} dropped as duplicates, eval posts or near-duplicates of them: "
        f"{leak_counts(leaks)})"
    )
    return pool, leak_counts(leaks)


def run_record(study: Study, grid: Grid, command: str, left_out: dict) -> dict:
    """The run's record before any teacher: what ran, where, on what, and the base's scores."""
    task, metric, base = study.task, study.task.metric, study.base
    return {
        "format": 2,  # every scoring per model, seed-hierarchical intervals, Holm families, tuning/reporting splits
        "task": task.name,
        "metric": metric,
        "val_posts": len(task.val_texts),
        "val_source": task.val_source,
        "splits": task.splits,
        "train_posts_left_out_as_eval_posts": left_out,  # exact and near-duplicate, before annotation
        "scorings": list(task.scorings),
        "headline_scoring": study.headline,
        "command": command,
        "commit": git_commit(),
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "device": study.placement.description,
        "load_average_before": os.getloadavg()[0],
        "grid": asdict(grid),
        "recipe": grid.recipe.model_dump(),
        "class_balance": task.balances_classes,
        "scoring": task.scoring,
        "count_names": task.count_names,
        "base": {"scores": estimates(base, metric), "per_class": per_class(task, study.base_prediction, base)},
        "teachers": {},
        "cells": [],
        "summary": [],
        "families": [],
    }


def annotate_pool(study: Study, grid: Grid, args, kind: str, pool: list[str], result: dict) -> Annotated:
    """The teacher scored on val and annotating the pool (with logprobs where it has them and KD is asked for),
    recorded in ``result["teachers"]``."""
    task, metric = study.task, study.task.metric
    _, validation_part, held_part = split_pool(pool, max(grid.sizes))
    wants_kd = any(alpha > 0 for alpha in grid.kd_alphas)
    teacher = start_teacher(kind, task, frozenset(normalise_post(t) for t in pool))
    top_logprobs = TOP_LOGPROBS if wants_kd and teacher.without_logprobs is None else None
    try:
        teacher_val, _ = annotate(teacher, task, task.val_texts)
        annotations, logprobs = annotate(teacher, task, pool, top_logprobs)
    finally:
        teacher.stop()
    teacher_prediction = Prediction({"generated": task.teacher_predictions(teacher_val)})
    teacher_scores = scored(task, teacher_prediction, study.indices)
    # the embedded teacher serves the offline model, the student's own base checkpoint
    self_distillation = kind == "embedded" and model_identity(MODEL_NAME) == model_identity(study.model_path)
    ok = usable(annotations)
    held_labels = task.label_index(annotations[held_part]) if study.held_out else None
    if held_labels is not None and not (held_labels >= 0).any():
        raise SystemExit(f"{teacher.name} answered none of the {len(held_labels)} held-out posts usably")
    held_indices = resample_indices(int((held_labels >= 0).sum()), args.resamples, 1) if study.held_out else None
    base_nll = (
        bootstrap(MeanScores(teacher_nll(study.base_prediction.held, held_labels)), held_indices)
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
    validation = examples_frame(
        task, pool[validation_part], annotations[validation_part], "validation", "v", logprobs[validation_part]
    )[ok[validation_part]]
    versus_teacher = None if self_distillation else teacher_scores
    return Annotated(kind, annotations, logprobs, ok, validation, alphas, held_labels, held_indices, versus_teacher)


def train_size(
    study: Study, grid: Grid, args, pool: list[str], annotated: Annotated, size: int, result: dict
) -> dict[tuple[str, str, float], list[Measured]]:
    """Every seed's cells at N = ``size`` (each seed draws its N posts, the usable ones train), recorded in
    ``result["cells"]``; the seeds' scores per (mode, strength, KD weight), for pooling."""
    train_part, _, _ = split_pool(pool, max(grid.sizes))
    by_cell: dict[tuple[str, str, float], list[Measured]] = {}
    for seed in grid.seeds:
        chosen = np.random.default_rng(seed).permutation(len(pool[train_part]))[:size]
        chosen = chosen[annotated.usable[chosen]]
        train = examples_frame(
            study.task,
            [pool[i] for i in chosen],
            [annotated.annotations[i] for i in chosen],
            "train",
            "t",
            [annotated.logprobs[i] for i in chosen],
        )
        examples = pd.concat([train, annotated.validation], ignore_index=True)
        cells = seed_cells(
            study, grid, examples, seed, annotated.alphas, annotated.held_labels, annotated.held_indices
        )
        for cell, measured in cells:
            cell.update(teacher=annotated.kind, n=size, seed=seed)
            cell["transfer_ratio"] = teacher_transfer(
                measured.scores, study.base, annotated.versus_teacher, study.task.metric
            )
            result["cells"].append(cell)
            by_cell.setdefault((cell["mode"], cell["strength"], cell["kd_alpha"]), []).append(measured)
            write_outputs(result, args, partial=True)
    return by_cell
