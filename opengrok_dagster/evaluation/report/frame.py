"""The report's numbers as one long DataFrame (the eval_report asset's value and results.parquet): one row per
(task, model, metric) score, per paired difference, per confusion cell of a task without gold labels, per
external reference, and per local model's label scoring tried and chosen on tuning posts (``scoring_choice``)."""

from __future__ import annotations

import pandas as pd

from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.report.tables import confusion_table
from opengrok_dagster.evaluation.results import EvaluationResults, TaskResult
from opengrok_dagster.evaluation.scoring import CLASSIFIER
from opengrok_dagster.evaluation.scoring_choice import choice_rows


RESULT_COLUMNS = (
    "section",
    "task",
    "model",
    "scoring",
    "headline",
    "compared_to",
    "metric",
    "primary",
    "value",
    "ci_low",
    "ci_high",
    "p_value",
    "n",
    "unparseable_rate",
    "external_reference",
    "reference_source",
    "dataset",
    "data_version",
    "seed",
    "resamples",
    "confidence",
)


def results_frame(results: EvaluationResults) -> pd.DataFrame:
    """One row per (task, model, metric) score, per paired difference, and per external reference."""
    cfg = results.config
    rows = []
    for task in results.tasks:
        common = {
            "task": task.name,
            "dataset": task.source,
            "data_version": task.data_version,
            "n": task.n,
            "seed": cfg.seed,
            "resamples": cfg.resamples,
            "confidence": cfg.confidence,
        }
        rows += _score_rows(task, common, cfg)
        rows += _comparison_rows(task, common, cfg)
        rows += _confusion_rows(task, common)
        rows += _reference_rows(task)
        rows += choice_rows(task.name, task.scoring_choices, common)
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    return frame.astype({"n": "Int64", "seed": "Int64", "resamples": "Int64", "primary": bool})


def _score_rows(task: TaskResult, common: dict, cfg: EvaluationConfig) -> list[dict]:
    rows = []
    for score in task.all_scores or task.scores:
        for metric in score.distribution.point:
            estimate = score.distribution.estimate(metric, cfg.confidence)
            rows.append(
                common
                | {
                    "section": "score",
                    "model": score.model,
                    "scoring": score.scoring,
                    "headline": score.scoring in (cfg.headline_scoring, CLASSIFIER),
                    "metric": metric,
                    "primary": metric == task.primary_metric,
                    "value": estimate.value,
                    "ci_low": estimate.low,
                    "ci_high": estimate.high,
                    "unparseable_rate": score.unparseable_rate,
                }
            )
    return rows


def _comparison_rows(task: TaskResult, common: dict, cfg: EvaluationConfig) -> list[dict]:
    rows = []
    for comparison in task.all_comparisons or task.comparisons:
        d = comparison.difference
        rows.append(
            common
            | {
                "section": "paired_difference",
                "model": comparison.model,
                "scoring": comparison.scoring,
                "headline": comparison.scoring == cfg.headline_scoring,
                "compared_to": comparison.compared_to,
                "metric": comparison.metric,
                "primary": comparison.metric == task.primary_metric,
                "value": d.value,
                "ci_low": d.low,
                "ci_high": d.high,
                "p_value": d.p_value,
            }
        )
    return rows


def _confusion_rows(task: TaskResult, common: dict) -> list[dict]:
    """Confusion counts of a task scored against another model's labels instead of gold (``spec`` None, e.g. the
    teacher's labels of the user's posts), one row per (model, label -> answer) cell: what no interval shows."""
    if task.spec is not None or task.answers is None or task.answers.multi_label:
        return []
    rows = []
    for model in task.answers.predictions:
        table = confusion_table(task.answers, model).set_index("gold \\ answer")
        rows += [
            common | {"section": "confusion", "model": model, "metric": f"{gold} -> {answer}", "value": float(count)}
            for gold, counts in table.iterrows()
            for answer, count in counts.items()
            if count
        ]
    return rows


def _reference_rows(task: TaskResult) -> list[dict]:
    return [
        {
            "task": task.name,
            "section": "external_reference",
            "model": reference.system,
            "metric": task.primary_metric,
            "primary": True,
            "external_reference": reference.value,
            "reference_source": reference.source,
        }
        for reference in (task.spec.references if task.spec else ())
    ]
