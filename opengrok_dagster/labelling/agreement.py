"""How often the student agrees with the teacher on the user's own posts: the quality figure without gold labels.

Measured on the teacher's annotations of the user's posts that no adapter trained on (``filtered_responses``
rows of ``split == heldout`` with a ``task``; ``FilterConfig.annotation_heldout_fraction`` of them), for every
task annotated, with the labels users get (``PostLabeller.annotate``: classes by calibrated and by raw label
likelihood, each variant's confusion matrix in the one chosen for its labels; topics over the threshold; generated
entities) from every local variant (base and each adapter), against the teacher's:
- sentiment (one label): Cohen's kappa and the agreement rate, and the confusion matrix (the teacher's label as
  the row);
- topics (several labels): Cohen's kappa over every (post, topic) yes/no decision, the share of posts given the
  same topics, and micro F1 with the teacher as the reference;
- entities: F1 over exact (type, text) entities with the teacher as the reference, and the share of posts with
  the same entities. Kappa needs a count of the decisions not to tag, which spans do not have: pairwise F1 is
  the agreement measure for entities (Hripcsak and Rothschild, 2005).
Bootstrap intervals on shared resamples and paired differences come from ``finish_task``: the result is an
evaluation ``TaskResult``, so the report shows it beside the gold-label scores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from opengrok_dagster.evaluation.metrics import MultiLabelScores
from opengrok_dagster.evaluation.results import ItemAnswers, TaskResult, finish_task
from opengrok_dagster.evaluation.scoring_choice import LABEL_SCORINGS
from opengrok_dagster.labelling.labeller import LabellingConfig, PostLabeller
from opengrok_dagster.tasks.formats import Annotation, TaskFormat, task_format


POSTS_AGREEMENT = "teacher_agreement_on_posts"
# The primary metric first: kappa where it is defined (a label prior inflates raw agreement), F1 for entities.
METRICS = {
    "classification": ("kappa", "agreement"),
    "multilabel": ("kappa", "agreement", "micro_f1"),
    "ner": ("f1", "agreement"),
}


def agreement_task_name(task: str) -> str:
    return f"{POSTS_AGREEMENT}:{task}"


def cohen_kappa(first: np.ndarray, second: np.ndarray, classes: int) -> float:
    """Cohen's kappa of two label vectors over ``classes`` classes; NaN where chance agreement is total."""
    if not len(first):
        return float("nan")
    observed = float(np.mean(first == second))
    expected = float(np.dot(np.bincount(first, minlength=classes), np.bincount(second, minlength=classes)))
    expected /= len(first) ** 2
    return float("nan") if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def _f1(matched: float, student: float, teacher: float) -> float:
    """F1 of the student's entities against the teacher's; 1 when neither gives any (they agree there are none),
    where the evaluation's ``NerScores`` scores a sentence without gold entities as 0."""
    return 2 * matched / (student + teacher) if student + teacher else 1.0


@dataclass(frozen=True)
class LabelAgreement:
    """One label per post (class indices), in the evaluation's scores protocol (``metrics(idx)``, ``n``)."""

    student: np.ndarray
    teacher: np.ndarray
    classes: int

    @property
    def n(self) -> int:
        return len(self.teacher)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        student, teacher = (self.student, self.teacher) if idx is None else (self.student[idx], self.teacher[idx])
        return {"kappa": cohen_kappa(student, teacher, self.classes), "agreement": float(np.mean(student == teacher))}


@dataclass(frozen=True)
class TopicAgreement:
    """Several labels per post, as boolean (posts x topics) matrices: micro F1 and the same-topics share are the
    evaluation's (``MultiLabelScores``) with the teacher's topics as the gold ones. Each side names at least one
    topic a post (the teacher's answer is read only then; the student's likeliest is always named)."""

    student: np.ndarray
    teacher: np.ndarray

    @property
    def n(self) -> int:
        return len(self.teacher)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        student, teacher = (self.student, self.teacher) if idx is None else (self.student[idx], self.teacher[idx])
        against_teacher = MultiLabelScores(gold=teacher, pred=student).metrics()
        return {
            "kappa": cohen_kappa(student.ravel().astype(int), teacher.ravel().astype(int), 2),
            "agreement": against_teacher["exact_match"],
            "micro_f1": against_teacher["micro_f1"],
        }


@dataclass(frozen=True)
class EntityAgreement:
    """Entities per post: how many (type, text) entities the two share, and how many each gave."""

    matched: np.ndarray
    student: np.ndarray
    teacher: np.ndarray

    @classmethod
    def of(cls, student: list[Annotation], teacher: list[Annotation]) -> EntityAgreement:
        """An unreadable student answer (``reason`` set) gives no entity, as in the evaluation."""
        given = [Counter(() if s.reason else s.spans) for s in student]
        wanted = [Counter(t.spans) for t in teacher]
        return cls(
            np.array([sum((s & t).values()) for s, t in zip(given, wanted)]),
            np.array([sum(s.values()) for s in given]),
            np.array([sum(t.values()) for t in wanted]),
        )

    @property
    def n(self) -> int:
        return len(self.teacher)

    def metrics(self, idx: np.ndarray | None = None) -> dict[str, float]:
        pick = (lambda a: a) if idx is None else (lambda a: a[idx])
        matched, student, teacher = pick(self.matched), pick(self.student), pick(self.teacher)
        same = (matched == student) & (matched == teacher)
        return {
            "f1": _f1(float(matched.sum()), float(student.sum()), float(teacher.sum())),
            "agreement": float(same.mean()),
        }


def heldout_annotations(filtered: pd.DataFrame, task: str) -> tuple[pd.DataFrame, list[Annotation]]:
    """The kept, held-out teacher annotations of ``task`` the teacher's answer can be read from (one label for a
    single-label task), with the post each asks about (``post``), and those answers."""
    if "task" not in filtered.columns:
        return filtered.iloc[0:0].assign(post=[]), []
    rows = filtered[
        (filtered["task"] == task) & (filtered["split"] == "heldout") & (filtered["state"] == "kept")
    ].reset_index(drop=True)
    fmt = task_format(task)
    posts = [_post_text(prompt) for prompt in rows["prompt"]]
    rows = rows.assign(post=posts)
    parsed = [fmt.parse(answer, " ".join(post.split())) for answer, post in zip(rows["response"], posts)]
    usable = [_readable(fmt, found) for found in parsed]
    return rows[usable].reset_index(drop=True), [found for found, keep in zip(parsed, usable) if keep]


def _post_text(prompt: str) -> str:
    """The post of an annotation's prompt (every task's messages end with ``Post: <text>``; filtered_responses
    keeps the prompt, not the post)."""
    return prompt.rsplit("\nPost: ", 1)[-1]


def _readable(fmt: TaskFormat, found: Annotation) -> bool:
    if found.reason:
        return False
    return fmt.kind == "ner" or (len(found.labels) == 1 if fmt.kind == "classification" else bool(found.labels))


def posts_agreement(
    student,
    filtered: pd.DataFrame,
    config,
    labelling: LabellingConfig | None = None,
    log: Callable[[str], None] = lambda message: None,
    choices: dict[str, dict[str, str]] | None = None,
) -> tuple[list[TaskResult], list[str]]:
    """Per task with held-out annotations, every variant of ``student`` (a ``LocalStudent``) labelling the posts
    as ``post_labels`` does with ``labelling`` (default: its defaults) against the teacher; ``config`` is the
    ``EvaluationConfig`` (seed, resamples, confidence); ``choices``, per task, each variant's label scoring chosen
    on the evaluation's tuning posts (its confusion matrix shows the labels it would give). Also the notes saying
    how many annotations were held out, or why a task was not measured."""
    labelling = labelling or LabellingConfig()
    choices = choices or {}
    tasks = sorted(filtered["task"].dropna().unique()) if "task" in filtered.columns else []
    results, notes = [], []
    for task in tasks:
        rows, teacher = heldout_annotations(filtered, task)
        if rows.empty:
            notes.append(
                f"{agreement_task_name(task)}: no readable teacher annotation of {task} is held out of training; "
                "raise the filter's annotation_heldout_fraction (filtered_responses) to measure it"
            )
            continue
        results.append(_task_agreement(student, rows, teacher, task, config, labelling, choices.get(task, {})))
        notes.append(
            f"{agreement_task_name(task)}: {len(rows)} teacher annotations of the user's posts held out of training "
            f"(no adapter trained on them); {_how(task_format(task))}"
        )
        log(notes[-1])
    return results, notes


def _how(fmt: TaskFormat) -> str:
    if fmt.kind == "ner":
        return (
            "entities compared as exact (type, text) pairs, F1 with the teacher as the reference (kappa is not "
            "defined for spans)"
        )
    if fmt.kind == "multilabel":
        return "kappa over every (post, topic) yes/no decision; agreement: the same topics"
    return "the confusion matrices' rows are the teacher's labels"


def _task_agreement(
    student,
    rows: pd.DataFrame,
    teacher: list[Annotation],
    task: str,
    config,
    labelling: LabellingConfig,
    choices: dict[str, str],
) -> TaskResult:
    """One task's agreement, under every label scoring ``post_labels`` may use (calibrated and raw, unless
    ``labelling`` fixes one; generation for entities), compared within each scoring."""
    fmt = task_format(task)
    texts = rows["post"].tolist()
    digest = pd.util.hash_pandas_object(rows[["example_id", "response"]], index=False).sum()
    metrics = METRICS[fmt.kind]
    result = TaskResult(
        None,
        agreement_task_name(task),
        metrics[0],
        f"filtered_responses (task == {task}, split == heldout)",
        f"{int(digest) & 0xFFFFFFFFFFFF:012x}",
        len(rows),
        len(rows),
    )
    headline = labelling.scoring(fmt.kind)
    free = fmt.kind != "ner" and labelling.calibrate is None
    scorings = (headline, *(s for s in LABEL_SCORINGS if s != headline)) if free else (headline,)
    reference = None if fmt.kind == "ner" else _answer_matrix(fmt, teacher)
    if reference is not None:
        result.answers = ItemAnswers(texts, reference, list(fmt.words), fmt.kind == "multilabel")
    scored = []
    for variant in student.variants:
        with student.using(variant):  # a labeller per variant: its content-free prior is the variant's own
            for scoring in scorings:
                predicted, _ = PostLabeller(student, labelling.following(scoring), variant).annotate(fmt, texts)
                scored.append((variant, scoring, _agreement_scores(fmt, predicted, teacher, reference), None))
                if reference is not None and scoring == choices.get(variant, headline):
                    result.answers.predictions[variant] = _answer_matrix(fmt, predicted)
    return finish_task(result, scored, metrics, config, headline=headline)


def _agreement_scores(fmt: TaskFormat, predicted: list[Annotation], teacher: list[Annotation], reference):
    if fmt.kind == "ner":
        return EntityAgreement.of(predicted, teacher)
    answers = _answer_matrix(fmt, predicted)
    if fmt.kind == "multilabel":
        return TopicAgreement(answers, reference)
    return LabelAgreement(answers, reference, len(fmt.words))


def _answer_matrix(fmt: TaskFormat, annotations: list[Annotation]) -> np.ndarray:
    """Class indices (one label per post), or a boolean (posts x topics) matrix."""
    if fmt.kind == "classification":
        return np.array([found.labels[0] for found in annotations], dtype=int)
    matrix = np.zeros((len(annotations), len(fmt.words)), dtype=bool)
    for row, found in enumerate(annotations):
        matrix[row, list(found.labels)] = True
    return matrix
