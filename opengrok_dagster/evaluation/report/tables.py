"""The report's tables, as DataFrames: the summary, did distillation help, each task's scores, scorings side by side,
ablations, external references, confusion matrices and example posts.

Published numbers appear only in the "external reference" column and tables, never among our measurements.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from opengrok_dagster.evaluation.compared_models import TEACHER
from opengrok_dagster.evaluation.results import EvaluationResults, ItemAnswers, TaskResult


EXAMPLE_POST_CHARS = 140


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_interval(value: float, low: float, high: float) -> str:
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def summary_table(results: EvaluationResults) -> pd.DataFrame:
    """Task x model on each task's primary metric, with the interval, and the external reference column last."""
    models = list(dict.fromkeys(s.model for t in results.tasks for s in t.scores))
    rows = []
    for task in results.tasks:
        row = {"task": task.name, "metric": task.primary_metric, "n": task.n}
        by_model = {
            s.model: s.distribution.estimate(task.primary_metric, results.config.confidence) for s in task.scores
        }
        for model in models:
            e = by_model.get(model)
            row[model] = fmt_interval(e.value, e.low, e.high) if e else "-"
        references = task.spec.references if task.spec else ()
        row["external reference (published, test set)"] = (
            "; ".join(f"{r.system} {r.value:.3f}" for r in references) or "-"
        )
        rows.append(row)
    return pd.DataFrame(rows)


def distillation_table(results: EvaluationResults) -> pd.DataFrame:
    """Per task, adapter and scoring both it and base have: did distillation help? The paired difference
    student - base with its interval (and the interval's half-width, the effect the sample can resolve), beside the
    base's, the teacher's (where it has that scoring) and the student's own scores on the primary metric. The
    headline scoring comes first; the others follow, since a difference can hold under one scoring only."""
    confidence, headline = results.config.confidence, results.config.headline_scoring
    rows = []
    for task in results.tasks:
        if task.spec is None:
            continue
        by_model = {
            (s.model, s.scoring): s.distribution.estimate(task.primary_metric, confidence)
            for s in task.all_scores or task.scores
        }
        comparisons = [
            c
            for c in task.all_comparisons or task.comparisons
            if c.compared_to == "base" and c.metric == task.primary_metric
        ]
        for c in sorted(comparisons, key=lambda c: c.scoring != headline):
            student, base, d = by_model[c.model, c.scoring], by_model.get(("base", c.scoring)), c.difference
            teacher = by_model.get((TEACHER, c.scoring))
            rows.append(
                {
                    "task": task.name,
                    "metric": task.primary_metric,
                    "n": task.n,
                    "student": c.model,
                    "scoring": c.scoring,
                    "base": fmt_interval(base.value, base.low, base.high) if base else "-",
                    "teacher": (
                        "self-distillation: not compared"
                        if results.self_distillation
                        else fmt_interval(teacher.value, teacher.low, teacher.high)
                        if teacher
                        else "-"
                    ),
                    "student score": fmt_interval(student.value, student.low, student.high),
                    "student - base": fmt_interval(d.value, d.low, d.high),
                    "+- (half-width)": fmt((d.high - d.low) / 2),
                    "p_value": fmt(d.p_value),
                }
            )
    return pd.DataFrame(rows)


def scorings_table(task: TaskResult, confidence: float) -> pd.DataFrame:
    """Every model under every scoring that applies to it, on the primary metric, side by side ("-": the scoring
    does not apply, e.g. label likelihood for an API model without logprobs)."""
    scorings = list(dict.fromkeys(s.scoring for s in task.all_scores))
    rows: dict[str, dict] = {}
    for score in task.all_scores:
        e = score.distribution.estimate(task.primary_metric, confidence)
        rows.setdefault(score.model, {"model": score.model} | dict.fromkeys(scorings, "-"))[score.scoring] = (
            fmt_interval(e.value, e.low, e.high)
        )
    return pd.DataFrame(list(rows.values()))


def scoring_choice_table(task: TaskResult) -> pd.DataFrame:
    """Each local model's primary metric on the tuning posts under each label scoring, and the one its labels use."""
    return pd.DataFrame(
        [
            {"model": c.model}
            | {scoring: fmt(value) for scoring, value in c.values.items()}
            | {"labels use": c.chosen}
            for c in task.scoring_choices
        ]
    )


def confusion_table(answers: ItemAnswers, model: str) -> pd.DataFrame:
    """Gold label (rows) x the model's answer (columns; 'unparseable' for an answer naming no single label)."""
    k = len(answers.words)
    predicted = answers.predictions[model]
    counts = np.zeros((k, k + 1), dtype=int)
    np.add.at(counts, (answers.gold, np.where(predicted < 0, k, predicted)), 1)
    frame = pd.DataFrame(counts, columns=[*answers.words, "unparseable"])
    if not counts[:, k].any():
        frame = frame.drop(columns="unparseable")
    frame.insert(0, "gold \\ answer", answers.words)
    return frame


def _answer_text(answers: ItemAnswers, row: int, predicted) -> str:
    if answers.multi_label:
        return ", ".join(answers.words[i] for i in np.flatnonzero(predicted[row])) or "(none)"
    return answers.words[predicted[row]] if predicted[row] >= 0 else "(unparseable)"


def example_rows(answers: ItemAnswers, count: int) -> list[int]:
    """Items on which the models disagree most (ties: item order), so the examples show what changed."""

    def spread(row: int) -> int:
        return len({_answer_text(answers, row, p) for p in answers.predictions.values()})

    return sorted(sorted(range(len(answers.texts)), key=lambda row: -spread(row))[:count])


def examples_table(answers: ItemAnswers, count: int) -> pd.DataFrame:
    rows = []
    for row in example_rows(answers, count):
        text = " ".join(answers.texts[row].split())
        gold = (
            ", ".join(answers.words[i] for i in np.flatnonzero(answers.gold[row]))
            if answers.multi_label
            else answers.words[answers.gold[row]]
        )
        rows.append(
            {
                "post": text if len(text) <= EXAMPLE_POST_CHARS else text[: EXAMPLE_POST_CHARS - 1] + "\u2026",
                "gold": gold,
            }
            | {model: _answer_text(answers, row, predicted) for model, predicted in answers.predictions.items()}
        )
    return pd.DataFrame(rows)


def task_table(task: TaskResult, confidence: float) -> pd.DataFrame:
    """Each model's every metric with its interval (the headline scoring), and its unparseable rate."""
    rows = []
    for score in task.scores:
        row = {"model": score.model}
        for metric in score.distribution.point:
            e = score.distribution.estimate(metric, confidence)
            row[metric] = fmt_interval(e.value, e.low, e.high)
        row["unparseable"] = fmt(score.unparseable_rate)
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_table(task: TaskResult) -> pd.DataFrame:
    """The task's paired bootstrap differences (model minus compared_to) in the headline scoring."""
    return pd.DataFrame(
        [
            {
                "model": c.model,
                "compared_to": c.compared_to,
                "metric": c.metric,
                "difference": fmt_interval(c.difference.value, c.difference.low, c.difference.high),
                "p_value": fmt(c.difference.p_value),
            }
            for c in task.comparisons
        ]
    )


def references_table(task: TaskResult) -> pd.DataFrame:
    """Published scores on the task's test split: context, never one of our measurements."""
    references = task.spec.references if task.spec else ()
    return pd.DataFrame(
        [{"system": r.system, task.primary_metric: f"{r.value:.3f}", "source": r.source} for r in references]
    )


def data_table(results: EvaluationResults) -> pd.DataFrame:
    """Each task's file, its content version and how many of its items were evaluated."""
    return pd.DataFrame(
        [
            {
                "task": t.name,
                "file": t.source,
                "data version (sha256)": t.data_version,
                "items in split": t.total_items,
                "items evaluated": t.n,
            }
            for t in results.tasks
        ]
    )
