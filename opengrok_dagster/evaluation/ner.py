"""NER by generation: spans parsed from ``type: entity`` lines (see :mod:`opengrok_dagster.tasks.formats`) mapped back
to BIO tags.

A generated entity counts only if its words occur in the post's tokens (case-insensitively); the share of
lines that could not be parsed or located is reported, so a model that rambles is visible as such.
"""

from __future__ import annotations

from opengrok_dagster.tasks.formats import comparable_token


def spans_to_tags(
    tokens: list[str], spans: list[tuple[str, str]], type_of_word: dict[str, str]
) -> tuple[list[str], int]:
    """BIO tags for the spans found in ``tokens`` (first free occurrence), and how many spans were not found."""
    tags = ["O"] * len(tokens)
    words = [comparable_token(t) for t in tokens]
    missing = 0
    for kind, text in spans:
        target = [comparable_token(t) for t in text.split()]
        width = len(target)
        start = (
            next(
                (
                    i
                    for i in range(len(tokens) - width + 1)
                    if words[i : i + width] == target and all(t == "O" for t in tags[i : i + width])
                ),
                None,
            )
            if width
            else None
        )
        if start is None:
            missing += 1
            continue
        entity_type = type_of_word[kind]
        tags[start : start + width] = [f"B-{entity_type}"] + [f"I-{entity_type}"] * (width - 1)
    return tags, missing
