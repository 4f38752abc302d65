"""The topic catalogue and the rules a topic key must follow to be a partition key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from opengrok_dagster.tasks.keys import TopicKeyError, validate_topic_key


class TopicCatalogueError(ValueError):
    """The topic catalogue file is missing or malformed."""


@dataclass(frozen=True)
class Topic:
    key: str
    name: str
    events: tuple[str, ...] = field(default_factory=tuple)


def load_topic_catalogue(path: str | Path) -> list[Topic]:
    """Read and validate the YAML topic catalogue at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise TopicCatalogueError(
            f"topic catalogue {path} does not exist; point the topic_catalogue setting at a YAML file "
            "like opengrok_dagster/config/topics.yaml"
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
