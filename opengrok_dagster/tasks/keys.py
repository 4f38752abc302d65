"""The rules a topic key must follow to be a partition key: shared by the posts catalogue, the topic catalogue and
the partitions, so they live below both stages."""

from __future__ import annotations

import re
import unicodedata


MAX_TOPIC_KEY_LENGTH = 64
_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class TopicKeyError(ValueError):
    """A topic key that cannot be a partition key (it also names files and directories)."""


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
