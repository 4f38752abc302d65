"""The evaluation's scores in the shape of a model card's ``model-index``, one list per adapter."""

from __future__ import annotations

import math

from huggingface_hub import EvalResult

from opengrok_dagster.evaluation.results import EvaluationResults, TaskResult
from opengrok_dagster.tasks.hub import HubSplit, is_hub_split


# The hub's task types for each kind of task; teacher agreement scores generated text.
TASK_TYPES = {
    "classification": "text-classification",
    "multilabel": "text-classification",
    "ner": "token-classification",
}


def eval_results_for(results: EvaluationResults, variant: str) -> list[EvalResult]:
    """Every metric ``variant`` (e.g. ``lora:hard``) scored on the full sample of each task, by task."""
    entries = []
    for task in results.tasks:
        score = next((s for s in task.scores if s.model == variant), None)
        if score is None:
            continue
        dataset = _dataset_fields(task)
        for metric, value in score.distribution.point.items():
            role = "primary" if metric == task.primary_metric else "other"
            if value is not None and math.isfinite(value):
                entries.append(
                    EvalResult(
                        task_type=TASK_TYPES[task.spec.kind] if task.spec else "text-generation",
                        task_name=task.name,
                        metric_type=metric,
                        metric_value=float(value),
                        metric_name=f"{metric} ({role}, n={task.n})",
                        **dataset,
                    )
                )
    return entries


def _dataset_fields(task: TaskResult) -> dict:
    """A hub split names its dataset, config and split; a local copy is named by the task (never by its path)."""
    if is_hub_split(task.source):
        split = HubSplit.parse(task.source)
        return {
            "dataset_type": split.dataset,
            "dataset_name": task.name,
            "dataset_config": split.config,
            "dataset_split": split.split,
        }
    return {"dataset_type": task.name, "dataset_name": task.name}
