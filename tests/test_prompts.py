from collections import Counter

import pytest

from opengrok_dagster.collect.prompts import PromptGridConfig, build_prompt_grid, prompt_id_for, prompt_messages
from opengrok_dagster.collect.topics import Topic


CLIMATE = Topic("climate", "climate change", ("the heatwave", "the UN summit"))


def test_grid_draws_the_configured_number_of_each_variant():
    rows = build_prompt_grid(CLIMATE, PromptGridConfig(base_per_topic=5, style_per_topic=3, adversarial_per_topic=2))
    assert Counter(r["variant"] for r in rows) == {"base": 5, "style": 3, "adversarial": 2}
    assert len({r["prompt_id"] for r in rows}) == len(rows)


def test_same_seed_same_prompts_and_ids():
    config = PromptGridConfig(seed=7)
    assert build_prompt_grid(CLIMATE, config) == build_prompt_grid(CLIMATE, config)
    other = build_prompt_grid(CLIMATE, PromptGridConfig(seed=8))
    assert {r["prompt_id"] for r in other} != {r["prompt_id"] for r in build_prompt_grid(CLIMATE, config)}


def test_prompt_id_depends_on_text_and_coordinates_only():
    messages = [{"role": "user", "content": "hi"}]
    coordinates = {"topic": "climate", "template_id": "trends"}
    assert prompt_id_for(messages, coordinates) == prompt_id_for(list(messages), dict(coordinates))
    assert prompt_id_for(messages, coordinates) != prompt_id_for(messages, {**coordinates, "template_id": "x"})
    assert prompt_id_for(messages, coordinates) != prompt_id_for([{"role": "user", "content": "hi!"}], coordinates)
    assert len(prompt_id_for(messages, coordinates)) == 16


def test_the_same_cell_gets_the_same_id_whatever_the_seed():
    """A prompt is recognised across runs even if the sampler picks it under another seed."""
    big = PromptGridConfig(base_per_topic=1000, style_per_topic=0, adversarial_per_topic=0)
    ids_a = {r["prompt_id"]: r["prompt"] for r in build_prompt_grid(CLIMATE, big)}
    ids_b = {
        r["prompt_id"]: r["prompt"]
        for r in build_prompt_grid(CLIMATE, PromptGridConfig(**{**big.__dict__, "seed": 99}))
    }
    assert ids_a == ids_b


def test_adding_a_topic_does_not_change_another_topics_prompts():
    football = Topic("football", "football", ("the derby",))
    assert build_prompt_grid(CLIMATE, PromptGridConfig()) == build_prompt_grid(CLIMATE, PromptGridConfig())
    assert {r["prompt_id"] for r in build_prompt_grid(football, PromptGridConfig())}.isdisjoint(
        {r["prompt_id"] for r in build_prompt_grid(CLIMATE, PromptGridConfig())}
    )


def test_prompts_render_topic_events_platforms_and_style_instructions():
    rows = build_prompt_grid(
        CLIMATE,
        PromptGridConfig(base_per_topic=0, style_per_topic=50, adversarial_per_topic=0, styles=("emoji_heavy",)),
    )
    assert all("Use lots of emoji and hashtags." in r["prompt"] for r in rows)
    assert all("{" not in r["prompt"] for r in rows)
    assert {r["style_kind"] for r in rows} == {"emoji"}
    messages = prompt_messages(rows[0])
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == rows[0]["prompt"]


def test_adversarial_prompts_carry_conflict_or_false_premises():
    rows = build_prompt_grid(CLIMATE, PromptGridConfig(base_per_topic=0, style_per_topic=0, adversarial_per_topic=100))
    assert {r["template_id"] for r in rows} == {
        "conflicting_claims",
        "false_premise",
        "retracted_viral_post",
        "sarcasm",
    }


def test_topic_without_events_still_renders_event_templates():
    rows = build_prompt_grid(
        Topic("k-pop", "k pop"),
        PromptGridConfig(templates=("people_saying",), style_per_topic=0, adversarial_per_topic=0),
    )
    assert rows and all("the latest news about k pop" in r["prompt"] for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"templates": ("nope",)}, "unknown templates"),
        ({"styles": ("loud",)}, "unknown styles"),
        ({"base_per_topic": -1}, "base_per_topic must be >= 0"),
        ({"platforms": ()}, "at least one platform"),
    ],
)
def test_bad_grid_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptGridConfig(**kwargs)


def test_every_cell_of_the_full_grid_renders_a_distinct_prompt():
    everything = PromptGridConfig(base_per_topic=10**6, style_per_topic=10**6, adversarial_per_topic=10**6)
    rows = build_prompt_grid(CLIMATE, everything)
    assert len({r["prompt"] for r in rows}) == len(rows)
    assert len({r["prompt_id"] for r in rows}) == len(rows)
