"""Which label scoring, calibrated or raw likelihood, each local model's labels of the user's posts use.

Calibration divides each label's likelihood by its likelihood after content-free posts; it helps a model with a
strong label prior and can cost a class the prior favours (the default run's students rarely said "neutral"
calibrated: docs/results.md). Which one serves a given adapter is measured, not assumed: on tuning posts drawn from
the evaluation split apart from the reported ones, by the task's primary metric, so the choice is never made on the
numbers the report shows. ``promoted_student`` and ``post_labels`` follow the choice (``scoring_choices``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from opengrok_dagster.evaluation.scoring import CALIBRATED, RAW


LABEL_SCORINGS = (CALIBRATED, RAW)  # the scorings that give class probabilities, so labels; ties go to the first
CHOICE_SECTION, TUNING_SECTION = "scoring_choice", "tuning_score"  # the results frame's rows of this module


@dataclass(frozen=True)
class ScoringChoice:
    """One model's primary metric on the tuning posts under each label scoring, and the one its labels use."""

    model: str
    metric: str
    n: int
    values: dict[str, float]  # scoring -> the metric on the tuning posts

    @property
    def chosen(self) -> str:
        return max(LABEL_SCORINGS, key=lambda scoring: (self.values[scoring], -LABEL_SCORINGS.index(scoring)))


def tuning_items(total: int, reported: np.ndarray, wanted: int, seed: int) -> np.ndarray:
    """Sorted indices of ``wanted`` items none of which is reported (all the others when there are fewer); drawn
    with another seed than the reported sample's."""
    rest = np.setdiff1d(np.arange(total), reported)
    if wanted == 0 or len(rest) == 0:
        return rest[:0]
    if wanted >= len(rest):
        return rest
    return np.sort(rest[np.random.default_rng(seed + 1).choice(len(rest), size=wanted, replace=False)])


def choice_rows(task: str, choices: list[ScoringChoice], common: dict) -> list[dict]:
    """The results frame's rows: each model's metric on the tuning posts per scoring, and the chosen one."""
    rows = []
    for choice in choices:
        shared = common | {
            "task": task,
            "model": choice.model,
            "metric": choice.metric,
            "primary": True,
            "n": choice.n,
        }
        rows += [
            shared | {"section": TUNING_SECTION, "scoring": scoring, "value": value}
            for scoring, value in choice.values.items()
        ]
        rows.append(
            shared | {"section": CHOICE_SECTION, "scoring": choice.chosen, "value": choice.values[choice.chosen]}
        )
    return rows


def scoring_choices(report: pd.DataFrame, task: str) -> dict[str, str]:
    """Model -> the label scoring chosen for it on ``task``'s tuning posts, from an eval report's frame (empty for
    a report without the choice: one written before it, or with ``scoring_tuning_examples`` 0)."""
    if report.empty or "section" not in report.columns:
        return {}
    rows = report[(report["section"] == CHOICE_SECTION) & (report["task"] == task)]
    return {str(row.model): str(row.scoring) for row in rows.itertuples()}
