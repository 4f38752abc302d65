"""TF-IDF word scores: idf fitted with scikit-learn on the training corpus, saved so a table can be rebuilt."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from opengrok_dagster.masks.config import MaskInputError
from opengrok_dagster.publish import publishing


def _identity(terms: list[str]) -> list[str]:
    return terms


@dataclass(frozen=True)
class TfidfScorer:
    """Sublinear tf x smoothed idf, scaled per document so its most distinctive word scores 1.

    Scaling by the maximum (not the l2 norm) keeps a long response's scores comparable to a tweet's, so one
    ``alpha`` fits both. A word the training corpus never saw gets the idf of a term with document frequency 0.
    """

    idf: dict[str, float]
    documents: int

    @classmethod
    def fit(cls, documents: Sequence[list[str]]) -> TfidfScorer:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if not any(documents):
            raise MaskInputError("no words to fit TF-IDF on: the training split has no prompt or response text")
        vectorizer = TfidfVectorizer(analyzer=_identity, sublinear_tf=True, smooth_idf=True)
        vectorizer.fit(documents)
        terms = vectorizer.get_feature_names_out()
        return cls({str(t): float(v) for t, v in zip(terms, vectorizer.idf_)}, len(documents))

    @property
    def unseen_idf(self) -> float:
        return math.log(1 + self.documents) + 1.0

    def score(self, terms: Sequence[str | None]) -> np.ndarray:
        """Per-word score in [0, 1] for one document's words; None (punctuation, space) scores 0."""
        counts = Counter(t for t in terms if t is not None)
        unseen = self.unseen_idf
        weights = {t: (1.0 + math.log(n)) * self.idf.get(t, unseen) for t, n in counts.items()}
        top = max(weights.values(), default=0.0)
        if top <= 0.0:
            return np.zeros(len(terms), dtype=np.float32)
        return np.fromiter(
            (weights[t] / top if t is not None else 0.0 for t in terms), dtype=np.float32, count=len(terms)
        )

    @cached_property
    def _json(self) -> str:
        return json.dumps(
            {"documents": self.documents, "sublinear_tf": True, "smooth_idf": True, "scaling": "max", "idf": self.idf},
            ensure_ascii=False,
            sort_keys=True,
        )

    @cached_property
    def sha(self) -> str:
        return hashlib.sha256(self._json.encode()).hexdigest()[:16]

    def save(self, directory: Path) -> Path:
        """Write ``tfidf-<sha>.json`` atomically; content-addressed, so every table keeps the vocabulary it used."""
        path = Path(directory) / f"tfidf-{self.sha}.json"
        with publishing(path) as (partial,):
            partial.write_text(self._json, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> TfidfScorer:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["idf"], data["documents"])
