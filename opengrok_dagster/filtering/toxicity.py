"""Toxicity scoring behind a one-method interface, so a stronger classifier can replace the default.

The default is alt-profanity-check: a linear SVM over TF-IDF features whose model ships inside the wheel
(no download at run time) and scores ~80,000 texts/s. Another classifier is configured as
``"package.module:factory"``: a zero-argument callable returning an object with ``score``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class ToxicityClassifier(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Probability in [0, 1] that each text is toxic or profane, as a float array of len(texts)."""


class ProfanityCheckClassifier:
    """alt-profanity-check's bundled model (trained on ~200k human-labelled toxic/offensive comments)."""

    name = "profanity_check"

    def __init__(self) -> None:
        from profanity_check import predict_prob  # loads the bundled joblib model (~3 s)

        self._predict_prob = predict_prob

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        return np.asarray(self._predict_prob(list(texts)), dtype=float)


def load_toxicity_classifier(spec: str) -> ToxicityClassifier:
    """``profanity_check`` or ``package.module:factory``; a bad spec is an error naming the fix."""
    if spec == ProfanityCheckClassifier.name:
        return ProfanityCheckClassifier()
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"toxicity_classifier {spec!r} is neither 'profanity_check' nor 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"toxicity_classifier {spec!r} cannot be imported: {exc}; install the package or fix the path"
        ) from None
    classifier = factory()
    if not callable(getattr(classifier, "score", None)):
        raise ValueError(
            f"toxicity_classifier {spec!r} returned {type(classifier).__name__}, which has no score(texts) method"
        )
    return classifier
