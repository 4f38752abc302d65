"""How a model's answer to a classification prompt is read, the same way for every model that can answer so.

- ``generated``: the model's greedy answer, parsed for the task's labels (``tasks.formats``): the one scoring every
  model has, API teachers without logprobs included.
- ``calibrated`` / ``raw``: the label whose tokens the model finds likeliest after the prompt, divided by its
  likelihood after content-free posts or not (``evaluation.calibration``): local models.
- ``classifier``: the TF-IDF baselines' own predictions.
"""

from __future__ import annotations

import numpy as np

from opengrok_dagster.tasks.formats import find_labels, parse_single_label


# How a model's answer to a classification prompt is read: its greedy generation parsed for a label (every model),
# or the label whose tokens it finds most likely after the prompt, calibrated against content-free posts or raw
# (local models). The TF-IDF baselines are classifiers: their one scoring is "classifier".
GENERATED, CALIBRATED, RAW = "generated", "calibrated", "raw"
SCORINGS = (GENERATED, CALIBRATED, RAW)
CLASSIFIER = "classifier"


def parsed_answers(answers: list[str | None], words: list[str], multi_label: bool) -> tuple[np.ndarray, float]:
    """Generated answers read as the task's labels (a failed request or an answer naming no label is unparseable),
    and the unparseable share."""
    if multi_label:
        predicted = np.zeros((len(answers), len(words)), dtype=bool)
        for row, answer in enumerate(answers):
            predicted[row, find_labels(answer or "", words)] = True
        return predicted, float((~predicted.any(axis=1)).mean())
    predicted = np.array([parse_single_label(a, words) for a in answers], dtype=int)
    return predicted, float((predicted < 0).mean())


def likeliest(logprobs: np.ndarray, multi_label: bool, topic_threshold: float) -> np.ndarray:
    """The likeliest label (single-label), or the top label and every label at or above ``topic_threshold``."""
    if not multi_label:
        return logprobs.argmax(axis=1)
    probabilities = np.exp(logprobs - logprobs.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    predicted = probabilities >= topic_threshold
    predicted[np.arange(len(logprobs)), probabilities.argmax(axis=1)] = True
    return predicted
