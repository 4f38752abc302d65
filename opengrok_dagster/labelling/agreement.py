"""How often the student agrees with the teacher on the user's own posts: the quality figure without gold labels.

Measured on the teacher's annotations of the user's posts that no adapter trained on (``filtered_responses``
rows of ``split == heldout`` with a ``task``; ``FilterConfig.annotation_heldout_fraction`` of them), for each
single-label classification task: the agreement rate and Cohen's kappa of every local variant (base and each
adapter) against the teacher's label, with bootstrap intervals on shared resamples and paired differences, and
the confusion matrix (the teacher's label as the row). The result is an evaluation ``TaskResult``, so the report
shows it beside the gold-label scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from opengrok_dagster.evaluation.calibration import calibrate, content_free_messages
from opengrok_dagster.evaluation.results import ItemAnswers, TaskResult, finish_task
from opengrok_dagster.evaluation.scoring import CALIBRATED
from opengrok_dagster.tasks.formats import task_format


POSTS_AGREEMENT = "teacher_agreement_on_posts"
METRICS = ("kappa", "agreement")  # kappa first: the primary metric, since a label prior inflates raw agreement


def agreement_task_name(task: str) -> str:
    return f"{POSTS_AGREEMENT}:{task}"


def cohen_kappa(first: np.ndarray, second: np.ndarray, classes: int) -> float:
    """Cohen's kappa of two label vectors over ``classes`` classes; NaN where chance agreement is total."""
    if not len(first):
        return float("nan")
    observed = float(np.mean(first == second))
    expected = float(np.dot(np.bincount(first, minlength=classes), np.bincount(second, minlength=classes)))
    expected /= len(first) ** 2
    return float("nan") if expected >= 1.0 else (observed - expected) / (1.0 - expected)


@dataclass(frozen=True)
class AgreementScores:
    """A variant's labels against the teacher's, in the evaluation's scores protocol (``metrics(idx)``, ``n``)."""

    student: np.ndarray
    teacher: np.ndarray
    classes: int

    @property
    def n(self) -> int:
        return len(self.teacher)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        student, teacher = (self.student, self.teacher) if idx is None else (self.student[idx], self.teacher[idx])
        return {
            "kappa": cohen_kappa(student, teacher, self.classes),
            "agreement": float(np.mean(student == teacher)),
        }


def heldout_annotations(filtered: pd.DataFrame, task: str) -> pd.DataFrame:
    """The kept, held-out teacher annotations of ``task`` with the teacher's label index (``teacher_label``)."""
    if "task" not in filtered.columns:
        return filtered.iloc[0:0].assign(teacher_label=[])
    rows = filtered[
        (filtered["task"] == task) & (filtered["split"] == "heldout") & (filtered["state"] == "kept")
    ].reset_index(drop=True)
    fmt = task_format(task)
    labels = [fmt.parse(answer, "").labels for answer in rows["response"]]
    usable = [len(found) == 1 for found in labels]
    return rows[usable].assign(teacher_label=[found[0] for found in labels if len(found) == 1]).reset_index(drop=True)


def _post_text(prompt: str) -> str:
    """The post of an annotation's prompt (``tasks.formats.classification_messages`` ends with ``Post: <text>``)."""
    return prompt.rsplit("\nPost: ", 1)[-1]


def posts_agreement(
    student, filtered: pd.DataFrame, config, log: Callable[[str], None] = lambda message: None
) -> tuple[list[TaskResult], list[str]]:
    """Per single-label task with held-out annotations, every variant of ``student`` (a ``LocalStudent``) against
    the teacher; ``config`` is the ``EvaluationConfig`` (seed, resamples, confidence, calibrate). Also the
    notes saying how many annotations were held out, or why a task was not measured."""
    tasks = sorted(filtered["task"].dropna().unique()) if "task" in filtered.columns else []
    results, notes = [], []
    for task in tasks:
        fmt = task_format(task)
        if fmt.kind != "classification":
            notes.append(f"{agreement_task_name(task)}: not measured, {task} is not a single-label task")
            continue
        rows = heldout_annotations(filtered, task)
        if rows.empty:
            notes.append(
                f"{agreement_task_name(task)}: no teacher annotation of {task} is held out of training; raise the "
                "filter's annotation_heldout_fraction (filtered_responses) to measure it"
            )
            continue
        results.append(_task_agreement(student, rows, task, config))
        notes.append(
            f"{agreement_task_name(task)}: {len(rows)} teacher annotations of the user's posts held out of training "
            "(no adapter trained on them); the confusion matrices' rows are the teacher's labels"
        )
        log(notes[-1])
    return results, notes


def _task_agreement(student, rows: pd.DataFrame, task: str, config) -> TaskResult:
    fmt, words = task_format(task), list(task_format(task).words)
    messages = [
        [{"role": "system", "content": s}, {"role": "user", "content": p}]
        for s, p in zip(rows["system_prompt"], rows["prompt"])
    ]
    teacher = rows["teacher_label"].to_numpy(dtype=int)
    digest = pd.util.hash_pandas_object(rows[["example_id", "response"]], index=False).sum()
    result = TaskResult(
        None,
        agreement_task_name(task),
        METRICS[0],
        f"filtered_responses (task == {task}, split == heldout)",
        f"{int(digest) & 0xFFFFFFFFFFFF:012x}",
        len(rows),
        len(rows),
    )
    result.answers = ItemAnswers([_post_text(p) for p in rows["prompt"]], teacher, words, False)
    scored = []
    for variant in student.variants:
        with student.using(variant):
            # calibrated, as post_labels labels the user's posts by default: the agreement measures the labels users get
            logprobs = calibrate(
                student.label_logprobs(messages, words),
                student.label_logprobs(content_free_messages(fmt.messages), words),
            )
        predicted = logprobs.argmax(axis=1)
        result.answers.predictions[variant] = predicted
        scored.append((variant, CALIBRATED, AgreementScores(predicted, teacher, len(words)), None))
    return finish_task(result, scored, METRICS, config, headline=CALIBRATED)
