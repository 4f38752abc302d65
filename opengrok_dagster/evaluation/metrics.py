"""Metrics from per-item statistics, so a bootstrap resample re-scores an index array without re-running a model.

Conventions (each matches scikit-learn / seqeval, tests check it):
- F1 of a label is 2TP / (2TP + FP + FN); a label with no gold and no predicted item is left out of macro
  averages (scikit-learn's ``zero_division=np.nan``), and so is a label without gold items from macro recall.
- An unparseable answer (prediction -1) is a miss for the gold label and a false positive for none.
- NER is micro precision/recall/F1 over exact entity spans (type and boundaries), as seqeval scores it.
- Per class (when the class names are given): ``recall:<label>`` (nan without gold items of it) and
  ``predicted:<label>``, the share of all answers naming it (unparseable answers name none).
- Teacher agreement: mean sentence-level chrF (sacrebleu, 0-100) and token-level perplexity
  ``exp(sum NLL / sum tokens)`` over the teacher's responses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


@dataclass(frozen=True)
class ClassificationScores:
    """Single-label predictions: ``pred`` is a class index, or -1 for an unparseable answer."""

    gold: np.ndarray
    pred: np.ndarray
    n_classes: int
    task_metric: str | None = (
        None  # 'f1_class_1' (TweetEval irony) or 'f1_against_favor' (stance), when the task uses one
    )
    labels: tuple[str, ...] = ()  # class names: given, every class's recall and predicted share are reported too

    @property
    def n(self) -> int:
        return len(self.gold)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        gold, pred = (self.gold, self.pred) if idx is None else (self.gold[idx], self.pred[idx])
        k = self.n_classes
        confusion = np.bincount(gold * (k + 1) + np.where(pred < 0, k, pred), minlength=k * (k + 1)).reshape(k, k + 1)
        tp = np.diag(confusion[:, :k]).astype(float)
        support = confusion.sum(axis=1).astype(float)
        predicted = confusion[:, :k].sum(axis=0).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
        f1 = _f1(tp, predicted - tp, support - tp)
        result = {
            "accuracy": float(tp.sum() / len(gold)) if len(gold) else float("nan"),
            "macro_recall": _nanmean(recall),
            "macro_f1": _nanmean(f1),
        }
        if self.labels:
            # macro recall hides a class never predicted: each class's recall and the share of answers naming it
            for index, label in enumerate(self.labels):
                result[f"recall:{label}"] = float(recall[index])
                result[f"predicted:{label}"] = float(predicted[index] / len(gold)) if len(gold) else float("nan")
        if self.task_metric == "f1_class_1":
            result["f1_class_1"] = float(np.nan_to_num(f1[1]))
        elif self.task_metric == "f1_against_favor":
            result["f1_against_favor"] = float(np.nan_to_num(f1[1:3]).mean())
        return result


@dataclass(frozen=True)
class MultiLabelScores:
    """Multi-label predictions as boolean (items x labels) matrices; an unparseable answer predicts no label."""

    gold: np.ndarray
    pred: np.ndarray

    @property
    def n(self) -> int:
        return len(self.gold)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        gold, pred = (self.gold, self.pred) if idx is None else (self.gold[idx], self.pred[idx])
        tp = (gold & pred).sum(axis=0).astype(float)
        fp = (~gold & pred).sum(axis=0).astype(float)
        fn = (gold & ~pred).sum(axis=0).astype(float)
        micro = _f1(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))[0]
        return {
            "micro_f1": float(np.nan_to_num(micro)),
            "macro_f1": _nanmean(_f1(tp, fp, fn)),
            "exact_match": float((gold == pred).all(axis=1).mean()),
        }


def entity_counts(gold_tags: list[list[str]], pred_tags: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sentence: entities found exactly (type and span), predicted, and gold, by seqeval's chunking."""
    from seqeval.metrics.sequence_labeling import get_entities

    if len(gold_tags) != len(pred_tags):
        raise ValueError(f"{len(gold_tags)} gold sentences but {len(pred_tags)} predicted")
    tp, n_pred, n_gold = [], [], []
    for gold, pred in zip(gold_tags, pred_tags):
        if len(gold) != len(pred):
            raise ValueError(f"a sentence has {len(gold)} gold tags but {len(pred)} predicted tags")
        gold_entities, pred_entities = set(get_entities(gold)), set(get_entities(pred))
        tp.append(len(gold_entities & pred_entities))
        n_pred.append(len(pred_entities))
        n_gold.append(len(gold_entities))
    return np.array(tp), np.array(n_pred), np.array(n_gold)


@dataclass(frozen=True)
class NerScores:
    true_positives: np.ndarray
    predicted: np.ndarray
    gold: np.ndarray

    @classmethod
    def from_tags(cls, gold_tags: list[list[str]], pred_tags: list[list[str]]) -> NerScores:
        return cls(*entity_counts(gold_tags, pred_tags))

    @property
    def n(self) -> int:
        return len(self.gold)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        select = (lambda a: a) if idx is None else (lambda a: a[idx])
        tp, predicted, gold = (float(select(a).sum()) for a in (self.true_positives, self.predicted, self.gold))
        precision = tp / predicted if predicted else 0.0
        recall = tp / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}


@dataclass(frozen=True)
class AgreementScores:
    """Student vs teacher on held-out prompts: per-item chrF and (local models only) the teacher text's NLL."""

    chrf: np.ndarray
    nll_sum: np.ndarray | None = None
    tokens: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.chrf)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        select = (lambda a: a) if idx is None else (lambda a: a[idx])
        result = {"chrf": float(select(self.chrf).mean())}
        if self.nll_sum is not None:
            result["perplexity"] = float(np.exp(select(self.nll_sum).sum() / max(select(self.tokens).sum(), 1)))
        return result


def sentence_chrf(hypotheses: list[str], references: list[str]) -> np.ndarray:
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    return np.array([chrf.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)], dtype=float)
