"""Calibrated label scoring: each label's likelihood divided by its likelihood after a content-free post.

A small student scoring labels by log-likelihood mostly reports its label prior (the issue's check: the base
SmolLM2-135M answers "negative" to every post, a LoRA on gold labels "positive" to every post). Contextual
calibration (Zhao et al. 2021, "Calibrate Before Use") asks the same prompt with posts that carry no content
("N/A", "", "[MASK]"), takes the mean label distribution there as the prior, and divides it out:
``score(y | x) = log p(y | x) - log p_cf(y)`` with both distributions normalised over the label set. It is a
thin layer over any scorer with ``label_logprobs(messages, answers)`` (:class:`~.local.LocalStudent`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np


CONTENT_FREE_POSTS = ("N/A", "", "[MASK]")


class LabelScorer(Protocol):
    def label_logprobs(self, messages: list[list[dict[str, str]]], answers: list[str]) -> np.ndarray: ...


def normalise(logprobs: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalised over the label set (each row's exp sums to 1)."""
    top = logprobs.max(axis=1, keepdims=True)
    return logprobs - (top + np.log(np.exp(logprobs - top).sum(axis=1, keepdims=True)))


def content_free_messages(prompt_for: Callable[[str], list[dict[str, str]]]) -> list[list[dict[str, str]]]:
    return [prompt_for(post) for post in CONTENT_FREE_POSTS]


def calibrate(item_logprobs: np.ndarray, content_free_logprobs: np.ndarray) -> np.ndarray:
    """Items' label log-likelihoods minus the log of the mean label distribution over the content-free posts,
    renormalised over the label set."""
    prior = np.log(np.exp(normalise(content_free_logprobs)).mean(axis=0))
    return normalise(normalise(item_logprobs) - prior)


def calibrated_label_logprobs(
    scorer: LabelScorer,
    messages: list[list[dict[str, str]]],
    prompt_for: Callable[[str], list[dict[str, str]]],
    answers: list[str],
) -> np.ndarray:
    """(items x answers) calibrated log-scores, normalised over the label set; argmax is the prediction.

    ``prompt_for(post)`` builds the same prompt as ``messages`` for another post, so the content-free prior is
    measured under exactly the instruction and label list the items are scored with.
    """
    return calibrate(
        scorer.label_logprobs(messages, answers), scorer.label_logprobs(content_free_messages(prompt_for), answers)
    )
