"""Filtering the teacher's annotations of real posts, and turning the kept ones into training examples.

An annotation is parsed as the evaluation reads answers (JSON strictly in a structured mode); one it cannot
read, or with a label outside the task's vocabulary, or with an entity that is not in the post, is rejected
with that reason code. A kept annotation becomes the example the evaluation will ask: the task's own
messages for the post, and the answer in the task's format. Then a confident-learning filter (cleanlab's
``find_label_issues`` on out-of-fold probabilities of the TF-IDF classifier) flags likely-wrong sentiment
and topic labels for review, or rejects them.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from opengrok_dagster.filtering import checks
from opengrok_dagster.filtering.dedup import content_hash
from opengrok_dagster.tasks.baselines import tfidf_classifier
from opengrok_dagster.tasks.formats import Annotation, task_format


ANNOTATION_COLUMNS = ("task", "post_id", "post_text", "response_format")  # in raw responses of annotation prompts
LABEL_ISSUE = "label_issue"
DUPLICATE_ANNOTATION = "duplicate_annotation"
MIN_FOLDS = 2


def looks_like_json(answer: str | None) -> bool:
    return (answer or "").strip().startswith(("{", "```"))


def parse_annotation(task: str, answer: str | None, post_text: str) -> Annotation:
    """An answer that is (or starts as) a JSON object is validated strictly against the task's schema; any other
    answer is read as the evaluation reads free text. Endpoints that ignore ``response_format`` (``transformers
    serve`` does, with a warning) answer in free text even in a structured mode."""
    fmt = task_format(task)
    return fmt.parse_json(answer, post_text) if looks_like_json(answer) else fmt.parse(answer, post_text)


def as_training_example(task: str, post_text: str, annotation: Annotation) -> tuple[str, str, str]:
    """(system prompt, user prompt, response): exactly what the evaluation asks, answered in its format."""
    fmt = task_format(task)
    system, user = fmt.messages(post_text)
    return system["content"], user["content"], fmt.answer(annotation)


def class_label(task: str, labels: list[int]) -> str | None:
    """``<task>:<label>`` for a single-label classification annotation (what training balances classes by);
    None for multi-label and NER annotations, whose examples are not oversampled."""
    fmt = task_format(task)
    return f"{task}:{fmt.labels[labels[0]]}" if fmt.kind == "classification" and len(labels) == 1 else None


def review_key(prompt: str, response: str) -> str:
    """The review key of an annotation: its post and answer (answers alone repeat across posts)."""
    return content_hash(f"{prompt}\n{response}")


def check_annotations(rows: pd.DataFrame, reject_truncated: bool) -> pd.DataFrame:
    """Per annotation row: the training example (system_prompt, prompt, response rewritten), its label
    indices, and the rejection reasons (empty when usable). Earlier duplicates of a (task, post text) win."""
    out = rows.copy()
    systems, prompts, responses, labels, reasons = [], [], [], [], []
    seen: set[tuple[str, str]] = set()
    for row in rows.itertuples(index=False):
        found = checks.error_reasons(row.error, row.finish_reason, reject_truncated)
        annotation = Annotation()
        if not found:
            annotation = parse_annotation(row.task, row.response, row.post_text)
            found = [annotation.reason] if annotation.reason else []
        # By text, not post id: shards and datasets repeat posts under other ids, and the training example is the text.
        if not found and (row.task, row.post_text) in seen:
            found = [DUPLICATE_ANNOTATION]
        if not found:
            seen.add((row.task, row.post_text))
            system, prompt, response = as_training_example(row.task, row.post_text, annotation)
        else:
            system, prompt, response = (
                row.system_prompt,
                row.prompt,
                row.response if isinstance(row.response, str) else "",
            )
        systems.append(system)
        prompts.append(prompt)
        responses.append(response)
        labels.append(list(annotation.labels))
        reasons.append(found)
    return out.assign(system_prompt=systems, prompt=prompts, response=responses, labels=labels, reasons=reasons)


def label_issues(texts: list[str], labels: list[list[int]], n_classes: int, multi_label: bool, seed: int):
    """Per row, cleanlab's likely-label-error flag and label quality score (NaN where not scored), from out-of-fold
    probabilities of the TF-IDF + logistic-regression classifier. A class given (or, for topics, withheld) fewer
    than ``MIN_FOLDS`` times cannot be cross-validated: its rows are not scored. None when fewer than two
    classes remain."""
    matrix = np.zeros((len(labels), n_classes), dtype=bool)
    for row, chosen in enumerate(labels):
        matrix[row, chosen] = True
    rows, classes = np.ones(len(labels), dtype=bool), np.ones(n_classes, dtype=bool)
    while True:  # dropping a class can leave rows without a label, which can make another class constant
        given = matrix[rows][:, classes].sum(axis=0)
        usable = given >= MIN_FOLDS
        if multi_label:
            usable &= given <= rows.sum() - MIN_FOLDS
        classes[np.flatnonzero(classes)[~usable]] = False
        kept = matrix[:, classes]
        rows = kept.any(axis=1) if multi_label else kept.sum(axis=1) == 1
        if usable.all() or classes.sum() < 2:
            break
    if classes.sum() < 2 or rows.sum() < 2 * MIN_FOLDS:
        return None
    texts = [t for t, keep in zip(texts, rows) if keep]
    find = _multilabel_issues if multi_label else _single_label_issues
    flags, quality = find(texts, matrix[rows][:, classes], seed)
    all_flags, all_quality = np.zeros(len(labels), dtype=bool), np.full(len(labels), np.nan)
    all_flags[rows], all_quality[rows] = flags, quality
    return all_flags, all_quality


def _single_label_issues(texts: list[str], onehot: np.ndarray, seed: int):
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    given = onehot.argmax(axis=1)
    folds = StratifiedKFold(min(5, int(onehot.sum(axis=0).min())), shuffle=True, random_state=seed)
    probabilities = cross_val_predict(tfidf_classifier(seed), texts, given, cv=folds, method="predict_proba")
    return find_label_issues(given, probabilities, n_jobs=1), get_label_quality_scores(given, probabilities)


def _multilabel_issues(texts: list[str], multihot: np.ndarray, seed: int):
    from cleanlab.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores
    from sklearn.model_selection import KFold, cross_val_predict

    folds = KFold(min(5, len(texts)), shuffle=True, random_state=seed)
    probabilities = cross_val_predict(
        tfidf_classifier(seed, True), texts, multihot.astype(int), cv=folds, method="predict_proba"
    )
    given = [list(np.flatnonzero(row)) for row in multihot]
    return find_label_issues(given, probabilities, multi_label=True, n_jobs=1), get_label_quality_scores(
        given, probabilities
    )


def flag_label_issues(kept: pd.DataFrame, seed: int, min_rows: int) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Confident learning per classification task over its kept annotations: task -> (issue flags, quality
    scores) aligned with that task's rows of ``kept``, or None when the task has too few to judge: fewer than
    ``min_rows`` (out-of-fold TF-IDF probabilities from a few dozen posts doubt most labels) or too few per class."""
    results = {}
    for task, rows in kept.groupby("task", sort=True):
        fmt = task_format(task)
        if fmt.kind == "ner":
            continue
        if len(rows) < min_rows:
            results[task] = None
            continue
        results[task] = label_issues(
            rows["post_text"].tolist(), rows["labels"].tolist(), len(fmt.labels), fmt.kind == "multilabel", seed
        )
    return results


def annotation_scores(response_format: str | None, answer: str | None, quality: float | None) -> str:
    """What the filter knew of an annotation: the mode that answered, whether it was read as JSON, label quality."""
    return json.dumps(
        {
            "response_format": response_format,
            "read_as": "json" if looks_like_json(answer) else "text",
            "label_quality": None if quality is None else round(quality, 4),
        }
    )
