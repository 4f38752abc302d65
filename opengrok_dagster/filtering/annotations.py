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

from opengrok_dagster.evaluation.baselines import tfidf_classifier
from opengrok_dagster.filtering import checks
from opengrok_dagster.filtering.dedup import content_hash
from opengrok_dagster.sns_tasks import Annotation, task_format

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


def review_key(prompt: str, response: str) -> str:
    """The review key of an annotation: its post and answer (answers alone repeat across posts)."""
    return content_hash(f"{prompt}\n{response}")


def check_annotations(rows: pd.DataFrame, reject_truncated: bool) -> pd.DataFrame:
    """Per annotation row: the training example (system_prompt, prompt, response rewritten), its label
    indices, and the rejection reasons (empty when usable). Earlier duplicates of a (task, post) win."""
    out = rows.copy()
    systems, prompts, responses, labels, reasons = [], [], [], [], []
    seen: set[tuple[str, str]] = set()
    for row in rows.itertuples(index=False):
        found = checks.error_reasons(row.error, row.finish_reason, reject_truncated)
        annotation = Annotation()
        if not found:
            annotation = parse_annotation(row.task, row.response, row.post_text)
            found = [annotation.reason] if annotation.reason else []
        if not found and (row.task, row.post_id) in seen:
            found = [DUPLICATE_ANNOTATION]
        if not found:
            seen.add((row.task, row.post_id))
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
    """Per row, cleanlab's likely-label-error flag and the label quality score, from out-of-fold probabilities of
    the TF-IDF + logistic-regression classifier; None when some class has fewer than two examples (no folds)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    if multi_label:
        matrix = np.zeros((len(labels), n_classes), dtype=int)
        for row, chosen in enumerate(labels):
            matrix[row, chosen] = 1
        present = matrix.sum(axis=0)
        if (present[present > 0] < MIN_FOLDS).any() or (present > 0).sum() < 2:
            return None
        used = present > 0  # a topic nobody was given cannot be predicted; cleanlab sees the topics in use
        folds = KFold(min(5, len(labels)), shuffle=True, random_state=seed)
        probabilities = cross_val_predict(
            tfidf_classifier(seed, True), texts, matrix[:, used], cv=folds, method="predict_proba"
        )
        remap = {old: new for new, old in enumerate(np.flatnonzero(used))}
        given = [[remap[c] for c in chosen] for chosen in labels]
        issues = find_label_issues(given, probabilities, multi_label=True)
        from cleanlab.multilabel_classification.rank import get_label_quality_scores as multilabel_scores

        return issues, multilabel_scores(given, probabilities)
    single = np.array([chosen[0] for chosen in labels])
    counts = np.bincount(single, minlength=n_classes)
    if (counts[counts > 0] < MIN_FOLDS).any() or (counts > 0).sum() < 2:
        return None
    classes = np.flatnonzero(counts)  # cleanlab needs the classes 0..k-1 that occur
    given = np.searchsorted(classes, single)
    folds = StratifiedKFold(min(5, int(counts[counts > 0].min())), shuffle=True, random_state=seed)
    probabilities = cross_val_predict(tfidf_classifier(seed), texts, given, cv=folds, method="predict_proba")
    return find_label_issues(given, probabilities), get_label_quality_scores(given, probabilities)


def flag_label_issues(kept: pd.DataFrame, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
    """Confident learning per classification task over its kept annotations: task -> (issue flags, quality
    scores) aligned with that task's rows of ``kept``, or None when the task has too few to cross-validate."""
    results = {}
    for task, rows in kept.groupby("task", sort=True):
        fmt = task_format(task)
        if fmt.kind == "ner":
            continue
        results[task] = label_issues(
            rows["post_text"].tolist(), rows["labels"].tolist(), len(fmt.labels), fmt.kind == "multilabel", seed
        )
    return results


def annotation_scores(response_format: str | None, answer: str | None, quality: float | None) -> str:
    """What the filter knew of an annotation: the mode that answered, whether it was read as JSON, label quality."""
    return json.dumps({
        "response_format": response_format, "read_as": "json" if looks_like_json(answer) else "text",
        "label_quality": None if quality is None else round(quality, 4),
    })
