"""Prompt feedback from the filtered set, and how the next round's grid uses it."""

import pandas as pd

from opengrok_dagster.collect.feedback import (
    distinct_2,
    merge_history,
    refinement_for_round,
    score_prompts,
    yield_by_template,
)
from opengrok_dagster.collect.prompts import (
    DIRECT_ANSWER_INSTRUCTION,
    GridRefinement,
    PromptGridConfig,
    build_prompt_grid,
)
from opengrok_dagster.collect.topics import Topic


TOPIC = Topic(key="climate", name="climate change", events=("the COP summit", "the heatwave"))


def filtered(round_key: str, outcomes: dict[str, list[tuple[str, list[str], str]]]) -> pd.DataFrame:
    """outcomes: template_id -> [(state, reasons, response)]."""
    rows = []
    for template, results in outcomes.items():
        for state, reasons, response in results:
            rows.append(
                {
                    "round": round_key,
                    "template_id": template,
                    "platform": "Reddit",
                    "style": "neutral",
                    "variant": "base",
                    "state": state,
                    "reasons": reasons,
                    "response": response,
                }
            )
    return pd.DataFrame(rows)


ROUND_1 = filtered(
    "2026-11-24",
    {
        "trends": [
            ("rejected", ["refusal"], "I can't help with that."),
            ("rejected", ["deflection"], "I don't have real-time access."),
            ("kept", [], "Heat records everywhere and people are sharing fan hacks"),
        ],
        "write_post": [
            ("kept", [], "Climate change is a big issue today"),
            ("rejected", ["exact_duplicate"], "Climate change is a big issue today"),
            ("rejected", ["near_duplicate"], "Climate change is a big issue today!"),
        ],
        "sentiment": [
            ("kept", [], "Loving the summit energy, finally some action"),
            ("kept", [], "Negative: nobody trusts the pledges any more"),
        ],
    },
)


def test_feedback_scores_keep_refusal_length_and_diversity():
    feedback = score_prompts(ROUND_1)
    templates = feedback[feedback["dimension"] == "template_id"].set_index("value")
    assert templates.loc["trends", "keep_rate"] == 1 / 3 and templates.loc["trends", "refusal_rate"] == 2 / 3
    assert templates.loc["sentiment", "keep_rate"] == 1.0 and templates.loc["sentiment", "refusal_rate"] == 0.0
    assert templates.loc["write_post", "distinct_2"] < templates.loc["sentiment", "distinct_2"]
    assert set(feedback["dimension"]) == {"template_id", "platform", "style", "variant"}
    assert distinct_2(["a b c", "d e f"]) == 1.0 and distinct_2(["a b", "a b"]) == 0.5 and distinct_2([]) == 0.0


def test_refinement_comes_from_the_latest_earlier_round_only():
    feedback = score_prompts(ROUND_1)
    assert refinement_for_round(feedback, "2026-11-24") is None  # never from the round itself
    assert refinement_for_round(None, "2026-11-25") is None
    refinement = refinement_for_round(feedback, "2026-11-25")
    assert refinement.from_round == "2026-11-24"
    assert refinement.rewritten_templates == {"trends"}
    assert refinement.template_weights["trends"] < refinement.template_weights["sentiment"] == 1.0
    assert refinement.extra_adversarial == 1  # write_post's answers are uniform


def test_refined_grid_rewrites_down_weights_and_adds_adversarial_prompts():
    config = PromptGridConfig(base_per_topic=6, style_per_topic=4, adversarial_per_topic=2)
    plain = build_prompt_grid(TOPIC, config)
    assert build_prompt_grid(TOPIC, config, None) == plain  # no feedback: the same prompts as before
    refinement = GridRefinement(
        "2026-11-24", {"trends": 0.2, "people_saying": 0.2}, frozenset({"write_post"}), extra_adversarial=2
    )
    refined = build_prompt_grid(TOPIC, config, refinement)
    assert sum(r["variant"] == "adversarial" for r in refined) == 4
    assert all(r["prompt"].endswith(DIRECT_ANSWER_INSTRUCTION) == (r["template_id"] == "write_post") for r in refined)
    down, other = 0, 0
    for seed in range(40):
        rows = build_prompt_grid(TOPIC, PromptGridConfig(seed=seed), refinement)
        down += sum(r["template_id"] in ("trends", "people_saying") for r in rows if r["variant"] != "adversarial")
        other += sum(r["template_id"] in ("sentiment", "entities") for r in rows if r["variant"] != "adversarial")
    assert down < 0.5 * other  # weight 0.2 vs 1.0


def test_feedback_history_accumulates_and_shows_yield_round_over_round():
    first = score_prompts(ROUND_1)
    second_round = filtered(
        "2026-11-25",
        {
            "trends": [("kept", [], "Heatwave memes are all over my feed today")],
            "sentiment": [("kept", [], "Summit deal feels hopeful")],
        },
    )
    history = merge_history(first, score_prompts(second_round))
    assert merge_history(history, score_prompts(second_round)).equals(history)  # recomputed rounds replace
    table = yield_by_template(history)
    assert list(table.columns) == ["2026-11-24", "2026-11-25"]
    assert table.loc["trends", "2026-11-24"] == 1 / 3 and table.loc["trends", "2026-11-25"] == 1.0
