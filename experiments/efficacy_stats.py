"""The efficacy experiment's statistics: every scoring of a model bootstrapped on the shared resamples, paired
differences, the transfer ratio per resample, the held-out teacher NLL, and the seed-pooled summary of one (teacher,
N) with the Holm family of its comparisons."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.efficacy_tasks import EfficacyTask, Prediction
from opengrok_dagster.evaluation.bootstrap import (
    Distribution,
    Estimate,
    bootstrap,
    holm_family,
    paired_difference,
    pooled_over_seeds,
)


NLL = "teacher_nll"  # mean NLL of the teacher's answers on the held-out annotated posts


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


@dataclass(frozen=True)
class Measured:
    """One student's scores: the val metric under each scoring, the held-out teacher NLL (bootstrapped), its val
    predictions."""

    scores: dict[str, Distribution]
    nll: Distribution | None  # None when the grid holds no held-out posts
    prediction: Prediction


def scored(task: EfficacyTask, prediction: Prediction, indices: np.ndarray) -> dict[str, Distribution]:
    """Every scoring of one model's val predictions, bootstrapped on the shared resamples."""
    return {name: bootstrap(task.scores(predicted), indices) for name, predicted in prediction.scorings.items()}


def per_class(task: EfficacyTask, prediction: Prediction, scores: dict[str, Distribution]) -> dict:
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


def paired(a: Distribution | None, b: Distribution | None, metric: str) -> dict | None:
    return difference_dict(paired_difference(a, b, metric)) if a is not None and b is not None else None


def teacher_transfer(student: dict, base: dict, teacher: dict | None, metric: str) -> dict | None:
    """The transfer ratio on the one scoring the teacher has (generation); None for self-distillation, where the
    teacher is the base checkpoint itself and no student-versus-teacher claim is made."""
    if teacher is None:
        return None
    return transfer_ratio(student["generated"], base["generated"], teacher["generated"], metric) | {
        "scoring": "generated"
    }


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
    # One (teacher, N) read top to bottom: pooling, then each row with its comparisons, then their family; split,
    # the pieces would pass the same pooled maps between them.
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
