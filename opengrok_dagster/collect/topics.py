"""The topic catalogue and the rules a topic key must follow to be a partition key."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml


MAX_TOPIC_KEY_LENGTH = 64
_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class TopicKeyError(ValueError):
    """A topic key that cannot be a partition key (it also names files and directories)."""


class TopicCatalogueError(ValueError):
    """The topic catalogue file is missing or malformed."""


@dataclass(frozen=True)
class Topic:
    key: str
    name: str
    events: tuple[str, ...] = field(default_factory=tuple)


def validate_topic_key(key: object) -> str:
    """Return ``key`` if it is a usable partition key, else raise :class:`TopicKeyError` saying why.

    Dagster joins multi-partition keys with ``|`` and lists with commas, and the key names Parquet
    files, so anything beyond lowercase letters, digits, ``-`` and ``_`` is refused.
    """
    if not isinstance(key, str):
        raise TopicKeyError(f"topic key must be a string, got {type(key).__name__}: {key!r}")
    if not key:
        raise TopicKeyError("topic key is empty; use e.g. 'climate' or 'k-pop'")
    if len(key) > MAX_TOPIC_KEY_LENGTH:
        raise TopicKeyError(f"topic key {key[:20]!r}... is {len(key)} characters; the limit is {MAX_TOPIC_KEY_LENGTH}")
    bad = [c for c in key if unicodedata.category(c).startswith("C") or c in ",/\\|"]
    if bad:
        shown = ", ".join(sorted({repr(c) for c in bad}))
        raise TopicKeyError(
            f"topic key {key!r} contains {shown}; commas, slashes, '|' and control characters are not allowed"
        )
    if not _KEY_PATTERN.match(key):
        raise TopicKeyError(
            f"topic key {key!r} is invalid: use lowercase letters, digits, '-' and '_', starting with a "
            "letter or digit (e.g. 'climate', 'k-pop', 'world_cup')"
        )
    return key


def load_topic_catalogue(path: str | Path) -> list[Topic]:
    """Read and validate the YAML topic catalogue at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise TopicCatalogueError(
            f"topic catalogue {path} does not exist; point the topic_catalogue setting at a YAML file "
            "like config/topics.yaml"
        )
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TopicCatalogueError(f"topic catalogue {path} is not valid YAML: {exc}") from exc
    entries = document.get("topics") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise TopicCatalogueError(f"topic catalogue {path} needs a non-empty 'topics:' list")
    topics: list[Topic] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "key" not in entry:
            raise TopicCatalogueError(f"topic catalogue {path}: entry {index} needs at least a 'key'")
        try:
            key = validate_topic_key(entry["key"])
        except TopicKeyError as exc:
            raise TopicCatalogueError(f"topic catalogue {path}: entry {index}: {exc}") from exc
        if key in seen:
            raise TopicCatalogueError(f"topic catalogue {path}: topic key {key!r} appears twice")
        seen.add(key)
        events = entry.get("events") or []
        if not isinstance(events, list) or not all(isinstance(e, str) and e.strip() for e in events):
            raise TopicCatalogueError(f"topic catalogue {path}: 'events' of {key!r} must be a list of strings")
        topics.append(Topic(key=key, name=str(entry.get("name") or key.replace("-", " ")), events=tuple(events)))
    return topics


def find_topic(topics: list[Topic], key: str) -> Topic:
    """The catalogue entry for ``key``; a key added only as a partition gets a default entry."""
    for topic in topics:
        if topic.key == key:
            return topic
    return Topic(key=validate_topic_key(key), name=key.replace("-", " ").replace("_", " "))
