"""Prompt feedback: how well each template, platform, style and variant did in the filtered set, and the
grid refinement the next collection round takes from it.

The next round reads the feedback of the latest earlier round from the feedback Parquet file, not through
the asset graph, so prompts -> raw_responses -> filtered_responses -> prompt_feedback has no cycle.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from opengrok_dagster.collect.prompts import GridRefinement
from opengrok_dagster.tasks.reasons import DEFLECTION, REFUSAL, TEACHER_ERROR
from opengrok_dagster.tasks.schemas import read_stored


FEEDBACK_DIMENSIONS = ("template_id", "platform", "style", "variant")
FEEDBACK_COLUMNS = (
    "round",
    "dimension",
    "value",
    "responses",
    "keep_rate",
    "refusal_rate",
    "mean_chars",
    "distinct_2",
)
_WORD = re.compile(r"\w+")

# Refinement rules: a template keeping less than REWRITE_BELOW of its answers because the teacher refuses
# (refusal rate above REFUSAL_ABOVE) is rewritten to ask for a direct answer; every template is weighted by
# its keep rate (never below MIN_WEIGHT, so it can recover); a template whose answers are uniform
# (distinct-2 of all its answers below UNIFORM_BELOW) earns one extra adversarial prompt per topic.
REWRITE_BELOW = 0.5
REFUSAL_ABOVE = 0.2
MIN_WEIGHT = 0.2
UNIFORM_BELOW = 0.35


def distinct_2(texts: list[str]) -> float:
    """Distinct word bigrams over all bigrams of a group's answers: 1.0 all different, near 0 all alike."""
    total, distinct = 0, set()
    for text in texts:
        words = _WORD.findall(text.lower())
        bigrams = list(zip(words, words[1:]))
        total += len(bigrams)
        distinct.update(bigrams)
    return len(distinct) / total if total else 0.0


def score_prompts(filtered: pd.DataFrame) -> pd.DataFrame:
    """One row per (round, dimension, value): responses, keep and refusal rates, kept length, diversity."""
    frame = filtered.assign(
        kept=filtered["state"] == "kept",
        refused=filtered["reasons"].map(lambda reasons: REFUSAL in reasons or DEFLECTION in reasons),
        chars=filtered["response"].str.len(),
    )
    answered = frame["reasons"].map(lambda reasons: TEACHER_ERROR not in reasons)
    rows = []
    for dimension in FEEDBACK_DIMENSIONS:
        for (round_key, value), group in frame.groupby(["round", dimension], sort=True):
            kept = group[group["kept"]]
            # Diversity over every answer, duplicates included: uniform answers are what it should reveal.
            answers = group.loc[answered[group.index], "response"]
            rows.append(
                {
                    "round": round_key,
                    "dimension": dimension,
                    "value": value,
                    "responses": len(group),
                    "keep_rate": float(group["kept"].mean()),
                    "refusal_rate": float(group["refused"].mean()),
                    "mean_chars": float(kept["chars"].mean()) if len(kept) else 0.0,
                    "distinct_2": distinct_2(answers.tolist()),
                }
            )
    return pd.DataFrame(rows, columns=list(FEEDBACK_COLUMNS))


def merge_history(previous: pd.DataFrame | None, current: pd.DataFrame) -> pd.DataFrame:
    """Feedback accumulates round over round; rounds scored again replace their older rows."""
    if previous is None or previous.empty:
        return current.reset_index(drop=True)
    older = previous[~previous["round"].isin(current["round"].unique())]
    return (
        pd.concat([older, current], ignore_index=True)
        .sort_values(["round", "dimension", "value"])
        .reset_index(drop=True)
    )


def read_feedback(path: Path) -> pd.DataFrame | None:
    """The stored feedback history, or None when no feedback was materialised yet."""
    if not path.exists():
        return None
    return read_stored(path, "prompt feedback", FEEDBACK_COLUMNS, "re-materialise prompt_feedback or delete the file")


def refinement_for_round(feedback: pd.DataFrame | None, round_key: str) -> GridRefinement | None:
    """The refinement from the latest round before ``round_key`` (never the round itself: no feedback loop
    within a round), or None when there is no earlier feedback."""
    if feedback is None:
        return None
    earlier = feedback[feedback["round"] < round_key]
    if earlier.empty:
        return None
    source_round = earlier["round"].max()
    templates = earlier[(earlier["round"] == source_round) & (earlier["dimension"] == "template_id")]
    weights = {row.value: max(MIN_WEIGHT, row.keep_rate) for row in templates.itertuples()}
    rewritten = {
        row.value
        for row in templates.itertuples()
        if row.keep_rate < REWRITE_BELOW and row.refusal_rate > REFUSAL_ABOVE
    }
    uniform = sum(
        1
        for row in templates.itertuples()
        if row.responses > 1 and row.keep_rate > 0 and row.distinct_2 < UNIFORM_BELOW
    )
    return GridRefinement(source_round, weights, frozenset(rewritten), uniform)


def yield_by_template(feedback: pd.DataFrame) -> pd.DataFrame:
    """Keep rate per template (rows) and round (columns): the effect of refinement round over round."""
    templates = feedback[feedback["dimension"] == "template_id"]
    return templates.pivot(index="value", columns="round", values="keep_rate").rename_axis(
        index="template_id", columns=None
    )
