"""Exact and near-duplicate detection (MinHash LSH over word 3-grams), keeping the earliest response."""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence

from datasketch import MinHash, MinHashLSH

from opengrok_dagster.tasks.reasons import EXACT_DUPLICATE, NEAR_DUPLICATE


_WORD = re.compile(r"\w+")
SHINGLE_WORDS = 3


def normalise(text: str) -> str:
    """Case and whitespace do not make a response different."""
    return " ".join(text.lower().split())


def content_hash(text: str) -> str:
    """The review key: sha256 of the normalised scrubbed text, 16 hex digits; stable across re-collection."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]


def shingles(text: str) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + SHINGLE_WORDS]).encode("utf-8") for i in range(len(words) - SHINGLE_WORDS + 1)}


def _hash32(shingle: bytes) -> int:
    """CRC-32: several times cheaper than datasketch's sha1 and, unlike Python's salted ``hash``, the same
    in every process, so the filtered set is reproducible. datasketch mixes it (fmix) before permuting."""
    return zlib.crc32(shingle)


def duplicate_reasons(
    texts: Sequence[str], hashes: Sequence[str], threshold: float, num_perm: int
) -> list[str | None]:
    """For texts given earliest first: None for the first of each group, else the duplicate reason.

    LSH only proposes candidates; a candidate counts when its estimated Jaccard similarity reaches
    ``threshold``, so LSH's false positives never remove a response.
    """
    signatures = MinHash.bulk([shingles(text) for text in texts], num_perm=num_perm, hashfunc=_hash32)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen_hashes: set[str] = set()
    reasons: list[str | None] = []
    for index, (digest, signature) in enumerate(zip(hashes, signatures)):
        if digest in seen_hashes:
            reasons.append(EXACT_DUPLICATE)
            continue
        if any(signatures[other].jaccard(signature) >= threshold for other in lsh.query(signature)):
            reasons.append(NEAR_DUPLICATE)
            continue
        seen_hashes.add(digest)
        lsh.insert(index, signature)
        reasons.append(None)
    return reasons
