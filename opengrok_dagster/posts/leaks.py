"""Evaluation posts must never be trained on: every configured eval split's posts, normalised, and the rows of a
training input whose text is one of them or a near-duplicate of one.

Normalisation follows how TweetEval rewrote the SemEval tweets (URLs removed, mentions replaced by ``@user``),
so a post is recognised in either form: a retweet's ``RT @x:`` prefix is stripped, every whole ``@mention``
token becomes ``@user``, literal ``\\uXXXX`` escapes (TweetEval keeps some, doubly escaped) are decoded, and
case, punctuation and spacing are ignored. A post that is not the same text after that but shares at least
``NEAR_DUPLICATE_JACCARD`` of its word set with an eval post (a retweet with a comment, a reworded copy) is a
near-duplicate: found by MinHash LSH (datasketch) and confirmed by the exact token Jaccard.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from opengrok_dagster.tasks.specs import read_split, task_spec


NEAR_DUPLICATE_JACCARD = 0.7
_PERMUTATIONS = 64  # MinHash permutations: the LSH's candidates are confirmed exactly, so 64 suffice
_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})")
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_RETWEET = re.compile(r"^(?:rt\s+@\S+\s*:?\s*)+")
_MENTION = re.compile(r"(?<!\S)@\S+")
_NOT_WORD = re.compile(r"[^\w@#]+")


def normalise_post(text: str) -> str:
    text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    text = unicodedata.normalize("NFKC", text).lower()
    text = _RETWEET.sub("", _URL.sub(" ", text).strip())
    text = _MENTION.sub("@user", text)
    return " ".join(_NOT_WORD.sub(" ", text).split())


def split_texts(data) -> list[str]:
    """The post texts of a split as the evaluation reads it (NER sentences joined by spaces)."""
    return [" ".join(tokens) for tokens in data.tokens] if hasattr(data, "tokens") else list(data.texts)


@dataclass(frozen=True)
class Leak:
    split: str  # the eval split the post belongs to
    kind: str  # "exact" (same normalised text) or "near_duplicate"


class EvalPosts:
    """Every eval split's posts: exact matches by normalised-text hash, near-duplicates by MinHash LSH over word
    sets, each LSH candidate confirmed by its token Jaccard (>= ``threshold``)."""

    def __init__(self, texts_by_split: dict[str, list[str]], threshold: float = NEAR_DUPLICATE_JACCARD) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.hashes: dict[str, str] = {}
        self._words: list[frozenset[str]] = []
        self._splits: list[str] = []
        # candidates from a lower LSH threshold, so a pair just above ``threshold`` is rarely missed; all confirmed
        self._lsh = MinHashLSH(threshold=max(0.5, threshold - 0.2), num_perm=_PERMUTATIONS)
        for split, texts in texts_by_split.items():
            for text in texts:
                normalised = normalise_post(text)
                digest = _digest(normalised)
                if not normalised or digest in self.hashes:
                    continue
                self.hashes[digest] = split
                self._words.append(frozenset(normalised.split()))
                self._splits.append(split)
        for key, signature in enumerate(_signatures(self._words)):
            self._lsh.insert(str(key), signature)

    def __len__(self) -> int:
        return len(self.hashes)

    def matches(self, texts: Iterable[str]) -> list[Leak | None]:
        """Per text, the eval post it repeats (exactly or nearly), or None. Empty normalised texts never count."""
        normalised = [normalise_post(t) for t in texts]
        found: list[Leak | None] = [None] * len(normalised)
        unmatched = []
        for row, text in enumerate(normalised):
            split = self.hashes.get(_digest(text)) if text else None
            if split is not None:
                found[row] = Leak(split, "exact")
            elif text and self._words:
                unmatched.append(row)
        words = [frozenset(normalised[row].split()) for row in unmatched]
        for row, own, signature in zip(unmatched, words, _signatures(words)):
            for key in self._lsh.query(signature):
                other = self._words[int(key)]
                if len(own & other) >= self.threshold * len(own | other):
                    found[row] = Leak(self._splits[int(key)], "near_duplicate")
                    break
        return found

    def split_of(self, texts: Iterable[str]) -> list[str | None]:
        """Per text, the eval split it is a post (or a near-duplicate of a post) of, or None."""
        return [leak.split if leak else None for leak in self.matches(texts)]


def leak_counts(leaks: list[Leak | None]) -> dict[str, int]:
    """How many texts repeat an eval post exactly and how many nearly."""
    kinds = Counter(leak.kind for leak in leaks if leak is not None)
    return {"exact": kinds["exact"], "near_duplicate": kinds["near_duplicate"]}


def _digest(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def _signatures(word_sets: list[frozenset[str]]):
    from datasketch import MinHash

    if not word_sets:
        return []
    return MinHash.bulk([[w.encode("utf-8") for w in words] for words in word_sets], num_perm=_PERMUTATIONS)


def load_eval_posts(
    tasks: Iterable[str], data_dir: Path | None, eval_paths: dict[str, str] | None = None
) -> EvalPosts:
    """The posts of every task's evaluation split, as one index (each named by task and file)."""
    texts: dict[str, list[str]] = {}
    for name in tasks:
        spec = task_spec(name)
        data = read_split(spec, data_dir, (eval_paths or {}).get(name) or spec.eval_path)
        texts.setdefault(f"{name} ({data.source})", []).extend(split_texts(data))
    return EvalPosts(texts)
