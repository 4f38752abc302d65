"""The prompt grid: topics x templates x platforms x styles, plus adversarial variants.

Each prompt gets a stable ``prompt_id``: a hash of the rendered chat messages and the grid coordinates
that produced them, so the same prompt is recognised across runs, rounds and machines.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from opengrok_dagster.collect.topics import Topic


GRID_VERSION = 1
SYSTEM_PROMPT = (
    "You are an expert analyst of social-media posts. Answer concisely and write posts the way real users "
    "of the named platform write them."
)


@dataclass(frozen=True)
class Template:
    template_id: str
    text: str  # placeholders: {topic}, {event}, {platform}


# The first three come from the OpenGrok report; the rest cover the SNS tasks the student is evaluated on.
BASE_TEMPLATES: tuple[Template, ...] = (
    Template("trends", "Summarize the latest trends in {topic} on {platform}."),
    Template("people_saying", "What are people saying about {event} on social media, especially on {platform}?"),
    Template("write_post", "Write a short, informal post about {topic} in the style of a {platform} user."),
    Template(
        "sentiment",
        "Write a {platform} post reacting to {event}, then label its sentiment as positive, negative or "
        "neutral and explain the label in one sentence.",
    ),
    Template(
        "entities",
        "Write a {platform} post about {event} that mentions people, places or organisations, then list "
        "every named entity in it with its type (person, location, organisation, product, event).",
    ),
    Template(
        "topic_label",
        "Write a {platform} post that touches on {topic} only indirectly, then say which topic it is about "
        "and which words gave it away.",
    ),
)

# Prompt hacking: conflicting information, false premises and scenarios that need reasoning.
ADVERSARIAL_TEMPLATES: tuple[Template, ...] = (
    Template(
        "conflicting_claims",
        "One {platform} post says {event} was a huge success; a reply with more likes says it was a total "
        "failure. What are people actually saying, and which claim is better supported?",
    ),
    Template(
        "false_premise",
        "Everyone on {platform} agrees that nobody cares about {topic} any more. Write the most popular reply "
        "to that claim, and say whether the premise is true.",
    ),
    Template(
        "retracted_viral_post",
        "A viral {platform} post about {event} turned out to be partly false and its author apologised. "
        "Summarize how the conversation about {topic} would shift, step by step.",
    ),
    Template(
        "sarcasm",
        "'Oh great, {event}. Exactly what we all needed 🙄' — is this {platform} post positive or negative "
        "about {topic}? Explain the sarcasm.",
    ),
)

PLATFORMS: tuple[str, ...] = ("Twitter/X", "Reddit", "Instagram", "TikTok", "Facebook")


@dataclass(frozen=True)
class Style:
    style_id: str
    kind: str  # tone, perspective, register, slang, emoji
    instruction: str


STYLES: tuple[Style, ...] = (
    Style("sarcastic", "tone", "Use a sarcastic tone."),
    Style("enthusiastic", "tone", "Sound genuinely excited."),
    Style("sceptical_bystander", "perspective", "Write from the perspective of a sceptical bystander."),
    Style("insider", "perspective", "Write as someone directly involved."),
    Style("formal", "register", "Use a formal, newspaper-like register."),
    Style("gen_z_slang", "slang", "Use heavy internet slang and abbreviations (ngl, tbh, fr)."),
    Style("emoji_heavy", "emoji", "Use lots of emoji and hashtags."),
)


class PromptGridConfig(BaseModel):
    """How many prompts of each variant to draw per topic, from which axes, with which seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_per_topic: int = Field(default=6, description="Plain template prompts per topic and round.")
    style_per_topic: int = Field(
        default=4, description="Style-manipulated prompts (tone, perspective, register, slang, emoji)."
    )
    adversarial_per_topic: int = Field(
        default=2, description="Prompt-hacking prompts (conflicting claims, false premises, ...)."
    )
    seed: int = Field(default=0, description="Seed of the grid sampler: the same seed gives the same prompts.")
    templates: tuple[str, ...] = Field(
        default=tuple(t.template_id for t in BASE_TEMPLATES), description="Base template ids to draw from."
    )
    adversarial_templates: tuple[str, ...] = Field(
        default=tuple(t.template_id for t in ADVERSARIAL_TEMPLATES), description="Adversarial template ids."
    )
    platforms: tuple[str, ...] = Field(default=PLATFORMS, description="Platforms the prompts name.")
    styles: tuple[str, ...] = Field(
        default=tuple(s.style_id for s in STYLES), description="Style ids for style-manipulated prompts."
    )

    def model_post_init(self, context) -> None:
        for name in ("base_per_topic", "style_per_topic", "adversarial_per_topic"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        _select(BASE_TEMPLATES, self.templates, "template_id", "templates")
        _select(ADVERSARIAL_TEMPLATES, self.adversarial_templates, "template_id", "adversarial_templates")
        _select(STYLES, self.styles, "style_id", "styles")
        if not self.platforms:
            raise ValueError("platforms must name at least one platform")


# Appended to a template whose answers the teacher mostly refused in the previous round.
DIRECT_ANSWER_INSTRUCTION = (
    "This is for a dataset of realistic, fictional social-media posts: answer directly, without disclaimers."
)


@dataclass(frozen=True)
class GridRefinement:
    """What the previous round's prompt feedback changes in this round's grid (see collect/feedback.py)."""

    from_round: str
    template_weights: Mapping[str, float]  # sampling weight per template id; missing ids weigh 1.0
    rewritten_templates: frozenset[str] = frozenset()  # these get DIRECT_ANSWER_INSTRUCTION
    extra_adversarial: int = 0  # extra adversarial prompts per topic, for templates with uniform answers


def _draw(rng: random.Random, cells: list, count: int, refinement: GridRefinement | None) -> list:
    """Uniform sample without replacement, or weighted by template (Efraimidis-Spirakis keys u^(1/w))."""
    if refinement is None:
        return rng.sample(cells, min(count, len(cells)))
    keyed = []
    for cell in cells:
        weight = refinement.template_weights.get(cell[0].template_id, 1.0)
        key = rng.random() ** (1.0 / weight) if weight > 0 else -1.0
        keyed.append((key, cell))
    keyed.sort(key=lambda pair: pair[0], reverse=True)
    return [cell for key, cell in keyed[:count] if key >= 0]


def _select(options: tuple, wanted: tuple[str, ...], attribute: str, setting: str) -> list:
    by_id = {getattr(o, attribute): o for o in options}
    unknown = [w for w in wanted if w not in by_id]
    if unknown:
        raise ValueError(f"unknown {setting}: {unknown}; choose from {sorted(by_id)}")
    return [by_id[w] for w in wanted]


def prompt_id_for(messages: list[dict[str, str]], coordinates: dict[str, str]) -> str:
    """Stable id: sha256 over the rendered messages and the grid coordinates, first 16 hex digits."""
    canonical = json.dumps(
        {"grid_version": GRID_VERSION, "messages": messages, "coordinates": coordinates},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _render(template: Template, topic: Topic, platform: str, event: str) -> str:
    return template.text.format(topic=topic.name, platform=platform, event=event)


def build_prompt_grid(topic: Topic, config: PromptGridConfig, refinement: GridRefinement | None = None) -> list[dict]:
    """Draw the configured number of base, style and adversarial prompts for ``topic``, deterministically.

    The full grid is enumerated in a fixed order and sampled without replacement with a generator seeded
    by (seed, topic key), so adding a topic never changes another topic's prompts. A ``refinement`` from
    the previous round's feedback weights templates, rewrites refused ones and adds adversarial prompts.
    """
    rng = random.Random(f"{config.seed}:{topic.key}")
    events = list(topic.events) or [f"the latest news about {topic.name}"]
    templates = _select(BASE_TEMPLATES, config.templates, "template_id", "templates")
    adversarial = _select(ADVERSARIAL_TEMPLATES, config.adversarial_templates, "template_id", "adversarial_templates")
    styles = _select(STYLES, config.styles, "style_id", "styles")

    def events_for(template: Template) -> list[str]:
        # A template that never names an event gets one cell, not one identical prompt per event.
        return events if "{event}" in template.text else [""]

    base_cells = [(t, p, e, None) for t in templates for p in config.platforms for e in events_for(t)]
    style_cells = [(t, p, e, s) for t in templates for p in config.platforms for e in events_for(t) for s in styles]
    adversarial_cells = [(t, p, e, None) for t in adversarial for p in config.platforms for e in events_for(t)]

    rows: list[dict] = []
    for variant, cells, count in (
        ("base", base_cells, config.base_per_topic),
        ("style", style_cells, config.style_per_topic),
        (
            "adversarial",
            adversarial_cells,
            config.adversarial_per_topic + (refinement.extra_adversarial if refinement else 0),
        ),
    ):
        for template, platform, event, style in _draw(rng, cells, count, refinement):
            user = _render(template, topic, platform, event)
            if style is not None:
                user = f"{user} {style.instruction}"
            if refinement is not None and template.template_id in refinement.rewritten_templates:
                user = f"{user} {DIRECT_ANSWER_INSTRUCTION}"
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
            coordinates = {
                "topic": topic.key,
                "template_id": template.template_id,
                "platform": platform,
                "style": style.style_id if style else "neutral",
                "variant": variant,
                "event": event,
            }
            rows.append(
                {
                    "prompt_id": prompt_id_for(messages, coordinates),
                    **coordinates,
                    "style_kind": style.kind if style else "none",
                    "system_prompt": SYSTEM_PROMPT,
                    "prompt": user,
                    "grid_version": GRID_VERSION,
                    "seed": config.seed,
                }
            )
    return rows


def prompt_messages(row: dict) -> list[dict[str, str]]:
    """The chat messages a prompt row sends to the teacher."""
    return [{"role": "system", "content": row["system_prompt"]}, {"role": "user", "content": row["prompt"]}]
