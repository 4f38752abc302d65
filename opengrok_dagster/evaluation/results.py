"""What an evaluation produces: each task's scores under every scoring, their paired comparisons, and the run's
results; and ``finish_task``, which turns one task's per-item scores into bootstrap intervals and comparisons.

Below every task kind's scorer (classification, NER, held-out teacher agreement) and the labelling stage's
agreement on the user's posts, which all end a task with ``finish_task``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from opengrok_dagster.evaluation.api import Usage
from opengrok_dagster.evaluation.bootstrap import (
    Difference,
    Distribution,
    bootstrap,
    paired_difference,
    resample_indices,
)
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.local import LocalStudent
from opengrok_dagster.evaluation.scoring import CLASSIFIER
from opengrok_dagster.evaluation.scoring_choice import ScoringChoice
from opengrok_dagster.tasks.specs import TaskSpec


@dataclass
class ModelScore:
    model: str
    distribution: Distribution
    n: int
    unparseable_rate: float | None = None
    scoring: str = "generated"  # SCORINGS, or CLASSIFIER for the TF-IDF baselines


@dataclass
class PairedComparison:
    model: str
    compared_to: str
    metric: str
    difference: Difference
    scoring: str = "generated"


@dataclass
class ItemAnswers:
    """Each model's answer per item of a classification task, for the report's confusion matrices and examples:
    class indices (-1 unparseable), or for multi-label tasks boolean (items x labels) matrices."""

    texts: list[str]
    gold: np.ndarray
    words: list[str]
    multi_label: bool
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TaskResult:
    spec: TaskSpec | None  # None for teacher agreement
    name: str
    primary_metric: str
    source: str
    data_version: str
    total_items: int
    n: int
    scores: list[ModelScore] = field(default_factory=list)  # one per model: the headline scoring (or its only one)
    comparisons: list[PairedComparison] = field(default_factory=list)  # in the headline scoring
    # every model under every scoring that applies to it (the headline's included), and their comparisons
    all_scores: list[ModelScore] = field(default_factory=list)
    all_comparisons: list[PairedComparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    answers: ItemAnswers | None = None  # classification tasks only
    skipped: str | None = None  # why the task was not scored (too few items to measure anything), and how to score it
    # each local model's label scoring for post_labels, chosen on tuning items apart from the reported ones
    scoring_choices: list[ScoringChoice] = field(default_factory=list)


@dataclass
class EvaluationResults:
    config: EvaluationConfig
    data_dir: Path | None
    tasks: list[TaskResult]
    models: list[dict]
    notes: list[str]
    seconds: float
    throughput: dict = field(default_factory=dict)  # device, dtype, and posts/s of the local student per task
    api_usage: dict[str, Usage] = field(default_factory=dict)  # what each API model was sent, and its cost
    # the teacher serves the student's own base checkpoint: no student-versus-teacher comparison is meaningful
    self_distillation: bool = False


def sample_items(total: int, wanted: int, seed: int) -> np.ndarray:
    """Sorted indices of ``wanted`` items drawn without replacement (all of them when 0 or more than there are)."""
    if wanted == 0 or wanted >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=wanted, replace=False))


def ablation_pairs(models: list[str]) -> list[tuple[str, str]]:
    """Distillation (each adapter vs the base student) and the mask (each masked adapter vs mask 'none')."""
    pairs = [(m, LocalStudent.BASE) for m in models if m.startswith("lora:")]
    if "lora:none" in models:
        pairs += [(m, "lora:none") for m in models if m.startswith("lora:") and m != "lora:none"]
    return pairs


def finish_task(
    result: TaskResult,
    scored: list[tuple[str, str, object, float | None]],
    metrics: tuple[str, ...],
    config,
    headline: str | None = None,
) -> TaskResult:
    """Bootstraps every (model, scoring) of ``scored`` (model, scoring, scores with ``metrics(idx)`` and ``n``,
    unparseable rate) on one shared resample matrix, compares models within each scoring, and puts each model's
    ``headline`` scoring (default the config's; or, lacking it, a classifier's only one) in ``scores``."""
    headline = headline or config.headline_scoring
    indices = resample_indices(result.n, config.resamples, config.seed)
    for model, scoring, scores, unparseable in scored:
        result.all_scores.append(ModelScore(model, bootstrap(scores, indices), scores.n, unparseable, scoring))
    for scoring in dict.fromkeys(s.scoring for s in result.all_scores):
        by_model = {s.model: s.distribution for s in result.all_scores if s.scoring == scoring}
        for model, baseline in ablation_pairs(list(by_model)):
            for metric in metrics:
                difference = paired_difference(by_model[model], by_model[baseline], metric, config.confidence)
                result.all_comparisons.append(PairedComparison(model, baseline, metric, difference, scoring))
    result.scores = [s for s in result.all_scores if s.scoring in (headline, CLASSIFIER)]
    result.comparisons = [c for c in result.all_comparisons if c.scoring == headline]
    left_out = sorted({s.model for s in result.all_scores} - {s.model for s in result.scores})
    if left_out:
        result.notes.append(
            f"{', '.join(left_out)} not scored by {headline} (the headline scoring), so left out of the summary: "
            "see the scorings side by side"
        )
    return result
