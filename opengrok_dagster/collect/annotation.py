"""Annotation prompts: the teacher labels real posts for each SNS task, asked exactly as the evaluation asks.

The messages, vocabulary and answer format come from :mod:`opengrok_dagster.tasks.formats`. Structured output is
asked for where the endpoint supports it: ``response_format`` with the task's JSON schema, then
``json_object``, then free text; an endpoint that refuses a format (HTTP 400/422) is asked again with the
next one, and the format that answered is recorded with the response.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pandas as pd

from opengrok_dagster.collect.client import TeacherClient
from opengrok_dagster.collect.prompts import GRID_VERSION, prompt_id_for, prompt_messages
from opengrok_dagster.collect.result import TeacherResult
from opengrok_dagster.tasks.formats import TASK_FORMATS, TaskFormat, task_format
from opengrok_dagster.tasks.schemas import ANNOTATION_VARIANT


RESPONSE_FORMATS = ("json_schema", "json_object", "text")  # the fallback order
TEMPLATE_PREFIX = "annotate:"  # template_id of an annotation prompt: annotate:<task>
REFUSED_FORMAT_STATUSES = (400, 422)


def response_format_field(fmt: TaskFormat, mode: str) -> dict | None:
    """The request's ``response_format`` for ``mode`` (None for free text)."""
    if mode == "json_schema":
        schema = {"name": f"{fmt.name}_annotation", "strict": True, "schema": fmt.json_schema()}
        return {"type": "json_schema", "json_schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    if mode == "text":
        return None
    raise ValueError(f"unknown structured_output {mode!r}; choose from {', '.join(RESPONSE_FORMATS)}")


def annotation_messages(fmt: TaskFormat, text: str, mode: str) -> list[dict[str, str]]:
    """The evaluation's messages; in a JSON mode the user turn also says which JSON object to answer with."""
    messages = fmt.messages(text)
    if mode == "text":
        return messages
    return [messages[0], {"role": "user", "content": f"{messages[1]['content']}\n{fmt.json_instruction()}"}]


def posts_for_topic(posts: pd.DataFrame, topic: str, topics: list[str]) -> pd.DataFrame:
    """The posts a topic partition annotates: those with that topic, and a share of the posts without one
    (each untopiced post belongs to exactly one topic, by a hash of its id), so topics never annotate the
    same post twice and adding a post changes one topic's prompts only."""

    def owner(post_id: str) -> str:
        return topics[int(hashlib.sha256(post_id.encode()).hexdigest(), 16) % len(topics)]

    has_topic = posts["topic"].notna() & posts["topic"].isin(topics)
    mine = (has_topic & (posts["topic"] == topic)) | (~has_topic & posts["post_id"].map(owner).eq(topic))
    return posts[mine]


def build_annotation_prompts(
    posts: pd.DataFrame, topic: str, count: int, tasks: tuple[str, ...], mode: str, seed: int
) -> list[dict]:
    """``count`` annotation prompts for ``topic``: (post, task) pairs drawn with a generator seeded by topic.

    Rows have the prompt grid's columns plus ``task``, ``post_id``, ``post_text`` and ``structured_output`` (the
    mode asked for; the response records the mode that answered)."""
    if not tasks:
        raise ValueError("annotation_tasks is empty; name at least one of the SNS tasks or set annotation_share: 0")
    formats = [task_format(name) for name in tasks]
    response_format_field(formats[0], mode)  # refuses an unknown mode before anything is built
    if count == 0 or posts.empty:
        return []
    rng = random.Random(f"{seed}:{topic}:annotation")
    cells = [(post, task) for post in range(len(posts)) for task in range(len(formats))]
    pairs = [(posts.iloc[post], formats[task]) for post, task in sorted(rng.sample(cells, min(count, len(cells))))]
    rows = []
    for post, fmt in pairs:
        messages = annotation_messages(fmt, post["text"], mode)
        coordinates = {
            "topic": topic,
            "template_id": f"{TEMPLATE_PREFIX}{fmt.name}",
            "platform": post["platform"] or "",
            "style": "neutral",
            "variant": ANNOTATION_VARIANT,
            "event": "",
            "post_id": post["post_id"],
            "mode": mode,
        }
        rows.append(
            {
                "prompt_id": prompt_id_for(messages, coordinates),
                **{k: v for k, v in coordinates.items() if k not in ("post_id", "mode")},
                "style_kind": "none",
                "system_prompt": messages[0]["content"],
                "prompt": messages[1]["content"],
                "grid_version": GRID_VERSION,
                "seed": seed,
                "task": fmt.name,
                "post_id": post["post_id"],
                "post_text": post["text"],
                "structured_output": mode,
            }
        )
    return rows


def annotation_count(generative: int, share: float) -> int:
    """Annotation prompts that make ``share`` of all prompts when ``generative`` grid prompts are drawn;
    a share of 1 means annotation prompts only, as many as the grid would have drawn."""
    if not 0 <= share <= 1:
        raise ValueError(f"annotation_share must be in [0, 1], got {share}")
    if share == 1:
        return generative
    return round(generative * share / (1 - share))


async def complete_prompt(client: TeacherClient, row: dict) -> TeacherResult:
    """One prompt row's request. An annotation row asks with its structured-output mode and falls back to the
    next mode when the endpoint refuses that one; the result records the mode that answered."""
    mode = row.get("structured_output")
    if not isinstance(mode, str) or mode not in RESPONSE_FORMATS:
        return await client.complete(prompt_messages(row), row.get("prompt_id", ""))
    fmt = TASK_FORMATS[row["task"]]
    for fallback in RESPONSE_FORMATS[RESPONSE_FORMATS.index(mode) :]:
        result = await client.complete(
            prompt_messages(row), row.get("prompt_id", ""), response_format=response_format_field(fmt, fallback)
        )
        if result.ok or result.status_code not in REFUSED_FORMAT_STATUSES or fallback == "text":
            return replace(result, response_format=fallback)
    raise AssertionError("unreachable: the text mode always returns")
