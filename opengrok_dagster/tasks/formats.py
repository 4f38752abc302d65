"""The SNS tasks' formats: label vocabulary, the chat messages that ask, the answer format and its parsers.

One module that the evaluation (which scores answers), collection (which asks the teacher to annotate real
posts) and training (which teaches the student to answer) all import, so the three cannot drift apart: the
student is trained on exactly the messages and answers the evaluation will score.

Free-text parsing is tolerant (API models ramble); the JSON form is strict, for endpoints that support
structured output. Every rejected annotation carries a reason code (``REASONS``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


SYSTEM_PROMPT = "You label social-media posts. Answer with the requested label only."

SENTIMENT_LABELS = ("negative", "neutral", "positive")  # TweetEval's sentiment index order
# TweetTopic's 19 labels, in the README's index order (also the key order of each JSONL record).
TOPIC_LABELS = (
    "arts_&_culture",
    "business_&_entrepreneurs",
    "celebrity_&_pop_culture",
    "diaries_&_daily_life",
    "family",
    "fashion_&_style",
    "film_tv_&_video",
    "fitness_&_health",
    "food_&_dining",
    "gaming",
    "learning_&_educational",
    "music",
    "news_&_social_concern",
    "other_hobbies",
    "relationships",
    "science_&_technology",
    "sports",
    "travel_&_adventure",
    "youth_&_student_life",
)
WNUT17_TYPES = ("corporation", "creative-work", "group", "location", "person", "product")  # sorted, as read from CoNLL
BTC_TYPES = ("LOC", "ORG", "PER")
ENTITY_WORDS = {"PER": "person", "ORG": "organisation", "LOC": "location", "MISC": "miscellaneous"}

SENTIMENT_QUESTION = "What is the sentiment of this post?"
TOPIC_QUESTION = "Which topic is this post about?"
NER_QUESTION = "List the named entities in this post."

# Why an annotation was not usable; the filtering stage records these codes per rejected row.
REASONS = {
    "empty_answer": "the answer is empty",
    "no_label": "the answer names no label of the vocabulary",
    "several_labels": "the answer names several labels for a single-label task",
    "invalid_json": "a structured answer that is not a JSON object",
    "schema_mismatch": "a structured answer that does not match the task's JSON schema",
    "label_outside_vocabulary": "a label that is not in the task's vocabulary",
    "unparsed_lines": "answer lines that are not 'type: entity text'",
    "span_not_in_post": "an entity whose text does not occur in the post",
}

# Synonyms a model may use for a type, mapped to the verbal type names of the task (checked before use).
TYPE_SYNONYMS = {
    "per": "person",
    "people": "person",
    "persons": "person",
    "name": "person",
    "loc": "location",
    "place": "location",
    "locations": "location",
    "city": "location",
    "country": "location",
    "org": "organisation",
    "organization": "organisation",
    "company": "corporation",
    "brand": "product",
    "creative work": "creative-work",
    "work": "creative-work",
    "title": "creative-work",
    "misc": "miscellaneous",
}
_LINE = re.compile(
    r"^\s*(?:[-*•]|\d+[.)])?\s*\**\s*([A-Za-z][A-Za-z \-_]{0,30}?)\s*\**\s*[:=\u2013\u2014]\s*(.+?)\s*$"
)
_NONE = re.compile(r"^\s*(none|no entities|n/?a|nothing)\W*$", re.IGNORECASE)


def word_for(label: str, words: dict[str, str] | None = None) -> str:
    """The word a prompt uses for a dataset label: an explicit mapping, else underscores become spaces."""
    return (words or {}).get(label, label.replace("_&_", " & ").replace("_", " "))


# -- classification ---------------------------------------------------------------------------------------
def classification_messages(
    question: str, text: str, words: list[str], multi_label: bool = False
) -> list[dict[str, str]]:
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


# -- named entities ---------------------------------------------------------------------------------------
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


def comparable_token(token: str) -> str:
    """A token as entity matching compares it: lower case, surrounding punctuation stripped."""
    return re.sub(r"^\W+|\W+$", "", token.lower()) or token.lower()


def span_occurs(tokens: list[str], text: str) -> bool:
    """Whether the words of ``text`` occur, in order and adjacent, among ``tokens`` (as the scorer locates spans)."""
    words, target = [comparable_token(t) for t in tokens], [comparable_token(t) for t in text.split()]
    return bool(target) and any(words[i : i + len(target)] == target for i in range(len(words) - len(target) + 1))


# -- one task's format --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Annotation:
    """A parsed answer: class indices (classification, topics) or (type word, text) spans (NER); ``reason`` is
    None when usable, else a key of ``REASONS``."""

    labels: tuple[int, ...] = ()
    spans: tuple[tuple[str, str], ...] = ()
    reason: str | None = None


@dataclass(frozen=True)
class TaskFormat:
    """How one SNS task is asked and answered. ``labels`` are the dataset's names in class-index order (entity
    types for NER), ``words`` what the prompt offers for each, in the same order."""

    name: str  # the evaluation task whose prompts and answers these are
    kind: str  # classification | multilabel | ner
    question: str
    labels: tuple[str, ...]
    words: tuple[str, ...]

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat messages the evaluation asks with, for a post (NER posts are whitespace-tokenised)."""
        if self.kind == "ner":
            return ner_messages(self.question, text.split(), list(self.words))
        return classification_messages(self.question, text, list(self.words), self.kind == "multilabel")

    def answer(self, annotation: Annotation) -> str:
        """The answer text the evaluation reads (and, for labels, scores the log-likelihood of) for an annotation."""
        if self.kind == "ner":
            return "\n".join(f"{kind}: {text}" for kind, text in annotation.spans) or "none"
        return ", ".join(self.words[i] for i in annotation.labels)

    def parse(self, answer: str | None, text: str) -> Annotation:
        """A free-text answer, read as the evaluation reads it; entity spans must occur in ``text``."""
        if not answer or not answer.strip():
            return Annotation(reason="empty_answer")
        if self.kind == "ner":
            parsed = parse_entity_lines(answer, list(self.words))
            if parsed.unparsed_lines:
                return Annotation(reason="unparsed_lines")
            return self._located(tuple(parsed.spans), text)
        found = find_labels(answer, list(self.words))
        if not found:
            return Annotation(reason="no_label")
        if self.kind == "classification" and len(found) > 1:
            return Annotation(reason="several_labels")
        return Annotation(labels=tuple(sorted(found)))

    def json_schema(self) -> dict:
        """The JSON schema of a structured answer (OpenAI ``response_format`` with ``strict`` needs every property
        required and no additional ones)."""
        if self.kind == "ner":
            entity = {
                "type": "object",
                "additionalProperties": False,
                "required": ["type", "text"],
                "properties": {"type": {"type": "string", "enum": list(self.words)}, "text": {"type": "string"}},
            }
            properties = {"entities": {"type": "array", "items": entity}}
        elif self.kind == "multilabel":
            properties = {"topics": {"type": "array", "items": {"type": "string", "enum": list(self.words)}}}
        else:
            properties = {"label": {"type": "string", "enum": list(self.words)}}
        required = list(properties)
        return {"type": "object", "additionalProperties": False, "required": required, "properties": properties}

    def json_instruction(self) -> str:
        """What a prompt appended for ``json_object`` mode says, since that mode carries no schema."""
        if self.kind == "ner":
            shape = '{"entities": [{"type": <type>, "text": <entity text>}]}'
        elif self.kind == "multilabel":
            shape = '{"topics": [<topic>, ...]}'
        else:
            shape = '{"label": <label>}'
        return f"Answer with a JSON object only: {shape}, using the words above."

    def parse_json(self, answer: str | None, text: str) -> Annotation:
        """A structured answer, validated strictly against :meth:`json_schema`."""
        if not answer or not answer.strip():
            return Annotation(reason="empty_answer")
        try:
            value = json.loads(_strip_code_fence(answer))
        except ValueError:
            return Annotation(reason="invalid_json")
        if not isinstance(value, dict):
            return Annotation(reason="invalid_json")
        if set(value) != set(self.json_schema()["required"]):
            return Annotation(reason="schema_mismatch")
        index = {word: i for i, word in enumerate(self.words)}
        if self.kind == "ner":
            entities = value.get("entities")
            fields = ("type", "text")
            if not isinstance(entities, list) or not all(
                isinstance(e, dict) and set(e) == set(fields) and all(isinstance(e[f], str) for f in fields)
                for e in entities
            ):
                return Annotation(reason="schema_mismatch")
            if any(e["type"] not in index for e in entities):
                return Annotation(reason="label_outside_vocabulary")
            return self._located(tuple((e["type"], e["text"].strip()) for e in entities), text)
        key = "topics" if self.kind == "multilabel" else "label"
        chosen = value.get(key)
        chosen = [chosen] if self.kind == "classification" and isinstance(chosen, str) else chosen
        if not isinstance(chosen, list) or not chosen or not all(isinstance(c, str) for c in chosen):
            return Annotation(reason="schema_mismatch")
        if any(c not in index for c in chosen):
            return Annotation(reason="label_outside_vocabulary")
        return Annotation(labels=tuple(sorted({index[c] for c in chosen})))

    def _located(self, spans: tuple[tuple[str, str], ...], text: str) -> Annotation:
        tokens = text.split()
        if any(not span_occurs(tokens, entity) for _, entity in spans):
            return Annotation(spans=spans, reason="span_not_in_post")
        return Annotation(spans=spans)


def _strip_code_fence(answer: str) -> str:
    """Models in json_object or free-text mode sometimes wrap JSON in a Markdown code fence."""
    fenced = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", answer, flags=re.DOTALL)
    return fenced.group(1) if fenced else answer


def _format(name: str, kind: str, question: str, labels: tuple[str, ...], words: dict[str, str] | None = None):
    return TaskFormat(name, kind, question, labels, tuple(word_for(label, words) for label in labels))


# The SNS tasks the teacher annotates posts for, keyed by the evaluation task that scores them.
TASK_FORMATS: dict[str, TaskFormat] = {
    f.name: f
    for f in (
        _format("tweeteval_sentiment", "classification", SENTIMENT_QUESTION, SENTIMENT_LABELS),
        _format("tweet_topic", "multilabel", TOPIC_QUESTION, TOPIC_LABELS),
        _format("wnut17", "ner", NER_QUESTION, WNUT17_TYPES),
        _format("btc", "ner", NER_QUESTION, BTC_TYPES, ENTITY_WORDS),
    )
}


def task_format(name: str) -> TaskFormat:
    if name not in TASK_FORMATS:
        raise ValueError(f"no annotation format for task {name!r}; annotated tasks: {', '.join(TASK_FORMATS)}")
    return TASK_FORMATS[name]
