"""NER by generation: the prompt, a tolerant parser of ``type: entity`` lines, and spans mapped back to BIO tags.

A generated entity counts only if its words occur in the post's tokens (case-insensitively); the share of
lines that could not be parsed or located is reported, so a model that rambles is visible as such.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opengrok_dagster.evaluation.prompting import SYSTEM_PROMPT

# Synonyms a model may use for a type, mapped to the verbal type names of the task (checked before use).
TYPE_SYNONYMS = {
    "per": "person", "people": "person", "persons": "person", "name": "person",
    "loc": "location", "place": "location", "locations": "location", "city": "location", "country": "location",
    "org": "organisation", "organization": "organisation", "company": "corporation", "brand": "product",
    "creative work": "creative-work", "work": "creative-work", "title": "creative-work", "misc": "miscellaneous",
}
_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*\**\s*([A-Za-z][A-Za-z \-_]{0,30}?)\s*\**\s*[:=\u2013\u2014]\s*(.+?)\s*$")
_NONE = re.compile(r"^\s*(none|no entities|n/?a|nothing)\W*$", re.IGNORECASE)


def ner_messages(question: str, tokens: list[str], type_words: list[str]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": f"{question} Write one per line as 'type: entity text', with type one of: {', '.join(type_words)}. "
            f"Write 'none' if there are none.\nPost: {' '.join(tokens)}",
        },
    ]


@dataclass(frozen=True)
class ParsedEntities:
    spans: list[tuple[str, str]]  # (verbal type, entity text)
    unparsed_lines: int


def parse_entity_lines(answer: str | None, type_words: list[str]) -> ParsedEntities:
    """Read ``type: text`` lines; quotes, list markers and bold markers are tolerated, unknown types are not."""
    known = {word.lower(): word for word in type_words}
    spans, unparsed = [], 0
    for line in (answer or "").splitlines():
        if not line.strip() or _NONE.match(line):
            continue
        match = _LINE.match(line)
        kind = _type_word(match.group(1), known) if match else None
        if kind is None:
            unparsed += 1
            continue
        for text in re.split(r"\s*[,;]\s*", match.group(2)):
            text = text.strip().strip("\"'`*").strip()
            if text and not _NONE.match(text):
                spans.append((kind, text))
    return ParsedEntities(spans, unparsed)


def _type_word(raw: str, known: dict[str, str]) -> str | None:
    name = raw.strip().lower().replace("_", " ")
    return known.get(name) or known.get(TYPE_SYNONYMS.get(name, ""))


def _comparable(token: str) -> str:
    return re.sub(r"^\W+|\W+$", "", token.lower()) or token.lower()


def spans_to_tags(tokens: list[str], spans: list[tuple[str, str]], type_of_word: dict[str, str]) -> tuple[list[str], int]:
    """BIO tags for the spans found in ``tokens`` (first free occurrence), and how many spans were not found."""
    tags = ["O"] * len(tokens)
    words = [_comparable(t) for t in tokens]
    missing = 0
    for kind, text in spans:
        target = [_comparable(t) for t in text.split()]
        width = len(target)
        start = next(
            (i for i in range(len(tokens) - width + 1) if words[i:i + width] == target and all(t == "O" for t in tags[i:i + width])),
            None,
        ) if width else None
        if start is None:
            missing += 1
            continue
        entity_type = type_of_word[kind]
        tags[start:start + width] = [f"B-{entity_type}"] + [f"I-{entity_type}"] * (width - 1)
    return tags, missing
