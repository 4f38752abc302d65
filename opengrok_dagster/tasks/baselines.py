"""TnT-LLM-style light classifiers: TF-IDF + logistic regression on gold labels, or on labels the teacher produced."""

from __future__ import annotations

import numpy as np


def tfidf_classifier(seed: int, multi_label: bool = False):
    """The unfitted pipeline (also what the confident-learning filter cross-validates)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    classifier = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed)
    if multi_label:
        classifier = OneVsRestClassifier(classifier)
    vectoriser = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, lowercase=True)
    return make_pipeline(vectoriser, classifier)


def train_tfidf_classifier(texts: list[str], labels: np.ndarray, seed: int):
    """A fitted pipeline; ``labels`` is a class index vector, or a boolean matrix for a multi-label task."""
    multi_label = labels.ndim == 2
    return tfidf_classifier(seed, multi_label).fit(texts, labels.astype(int) if multi_label else labels)


def trainable(labels: np.ndarray) -> bool:
    """Logistic regression needs two classes (per label column, for multi-label: at least one column varying)."""
    if labels.ndim == 2:
        return bool(labels.any() and (~labels).any())
    return len(np.unique(labels)) >= 2
