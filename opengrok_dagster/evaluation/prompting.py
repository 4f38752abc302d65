"""The prompts every model sees, and robust parsing of free-text answers from API models.

Local models are never parsed: they are scored by the log-likelihood of each label word after the same
prompt, so they always answer. API models get the prompt with an explicit answer format; an answer that
names no label (or several, for a single-label task) is counted as unparseable, and the rate is reported.
"""

from __future__ import annotations

import re

SYSTEM_PROMPT = "You label social-media posts. Answer with the requested label only."


def classification_messages(question: str, text: str, words: list[str], multi_label: bool = False) -> list[dict[str, str]]:
    if multi_label:
        instruction = f"Answer with one or more of these topics, separated by commas: {'; '.join(words)}."
    else:
        instruction = f"Answer with exactly one of: {', '.join(words)}."
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{question} {instruction}\nPost: {text.strip()}"},
    ]


def _normalise(text: str) -> str:
    text = text.lower().replace("&", " and ")
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s-]", " ", text)).strip()


def find_labels(answer: str, words: list[str]) -> list[int]:
    """Indices of the label words named in ``answer``, in order of first mention.

    Longer words are matched first and blanked out, so 'not hate' is not also read as 'hate'.
    """
    remaining = f" {_normalise(answer)} "
    found: dict[int, int] = {}
    for index in sorted(range(len(words)), key=lambda i: -len(words[i])):
        pattern = re.compile(rf"(?<![\w-]){re.escape(_normalise(words[index]))}(?![\w-])")
        match = pattern.search(remaining)
        if match:
            found[index] = match.start()
            remaining = pattern.sub(lambda m: " " * len(m.group(0)), remaining)
    return sorted(found, key=found.get)


def parse_single_label(answer: str | None, words: list[str]) -> int:
    """The one label named, or -1 (unparseable) when none or several different ones are."""
    if not answer:
        return -1
    found = find_labels(answer, words)
    return found[0] if len(found) == 1 else -1
