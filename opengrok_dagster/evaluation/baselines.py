"""TnT-LLM-style light classifiers: TF-IDF + logistic regression on gold labels, or on labels the teacher produced."""

from __future__ import annotations

import numpy as np


def train_tfidf_classifier(texts: list[str], labels: np.ndarray, seed: int):
    """A fitted pipeline; ``labels`` is a class index vector, or a boolean matrix for a multi-label task."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    classifier = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed)
    if labels.ndim == 2:
        classifier = OneVsRestClassifier(classifier)
        labels = labels.astype(int)
    vectoriser = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True, lowercase=True)
    return make_pipeline(vectoriser, classifier).fit(texts, labels)


def trainable(labels: np.ndarray) -> bool:
    """Logistic regression needs two classes (per label column, for multi-label: at least one column varying)."""
    if labels.ndim == 2:
        return bool(labels.any() and (~labels).any())
    return len(np.unique(labels)) >= 2
