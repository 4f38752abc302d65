"""Evaluation posts must never be trained on: normalised text hashes of every configured eval split, and the
rows of a training input whose text is one of them.

Normalisation follows how TweetEval rewrote the SemEval tweets (URLs removed, mentions replaced by ``@user``),
so a post is recognised in either form; literal ``\\uXXXX`` escapes (TweetEval keeps some, doubly escaped) are
decoded, and case, punctuation and spacing are ignored.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from opengrok_dagster.tasks.specs import read_split, task_spec


_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})")
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_MENTION = re.compile(r"@\w+")
_NOT_WORD = re.compile(r"[^\w@#]+")


def normalise_post(text: str) -> str:
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    text = unicodedata.normalize("NFKC", text).lower()
    text = _MENTION.sub("@user", _URL.sub(" ", text))
    return " ".join(_NOT_WORD.sub(" ", text).split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise_post(text).encode("utf-8")).hexdigest()[:16]


def split_texts(data) -> list[str]:
    """The post texts of a split as the evaluation reads it (NER sentences joined by spaces)."""
    return [" ".join(tokens) for tokens in data.tokens] if hasattr(data, "tokens") else list(data.texts)


def eval_hashes(
    tasks: Iterable[str], data_dir: Path | None, eval_paths: dict[str, str] | None = None
) -> dict[str, str]:
    """Normalised text hash -> the eval split it occurs in, over every task's evaluation split."""
    hashes: dict[str, str] = {}
    for name in tasks:
        spec = task_spec(name)
        data = read_split(spec, data_dir, (eval_paths or {}).get(name) or spec.eval_path)
        for text in split_texts(data):
            hashes.setdefault(text_hash(text), f"{name} ({data.source})")
    return hashes


def eval_split_of(texts: Iterable[str], hashes: dict[str, str]) -> list[str | None]:
    """Per text, the eval split it is a post of, or None. Empty normalised texts never count as leaks."""
    return [hashes.get(text_hash(t)) if normalise_post(t) else None for t in texts]
