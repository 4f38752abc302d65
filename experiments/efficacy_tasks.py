"""The tasks the efficacy experiment measures on: what the teacher annotates, how its answers become training examples,
and how a student's answers on the val split are scored, one class per kind of answer.

``SentimentTask`` (TweetEval sentiment): a label word, scored every way the report scores it (greedy generation
parsed for a label, calibrated and raw label log-likelihood), with the held-out teacher NLL the KD arm is judged
on. ``EntityTask`` (BTC, the Broad Twitter Corpus): ``type: entity`` lines, scored by entity F1 of greedy
generations parsed as the report parses them. Both read the gold train split's texts only (its labels never reach
the student) and drop every post of the evaluation split (tuning and reporting parts alike).

The val split is cut in two by a seeded permutation: the tuning part (the first ``TUNING_SHARE``: 1,400 of
TweetEval's 2,000 val posts) is where recipes are chosen, the reporting part (the other 600) where results are
reported; a run scores one of them and records both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opengrok_dagster.evaluation.calibration import calibrate, content_free_messages
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.local import LocalStudent
from opengrok_dagster.evaluation.metrics import ClassificationScores, NerScores
from opengrok_dagster.evaluation.ner import spans_to_tags
from opengrok_dagster.evaluation.results import sample_items
from opengrok_dagster.evaluation.scoring import parsed_answers
from opengrok_dagster.filtering.annotations import class_label
from opengrok_dagster.posts.leaks import EvalPosts
from opengrok_dagster.tasks.formats import Annotation, parse_entity_lines, task_format
from opengrok_dagster.tasks.specs import read_split, task_spec


TUNING_SHARE = 0.7  # of the val split, for tuning recipes; the rest is for reporting
SPLITS = ("tuning", "reporting")


def split_val(total: int, part: str) -> np.ndarray:
    """Sorted indices of the val split's tuning or reporting part (disjoint, together the whole split)."""
    order = np.random.default_rng(0).permutation(total)
    cut = round(TUNING_SHARE * total)
    return np.sort(order[:cut] if part == "tuning" else order[cut:])


@dataclass(frozen=True)
class Prediction:
    """A model's val predictions in the task's scoring shape under each scoring (``EfficacyTask.scorings``), and its
    label log-likelihoods on the held-out annotated posts (label tasks with held-out posts)."""

    scorings: dict[str, object]
    held: np.ndarray | None = None


class EfficacyTask:
    """One evaluation task: its val items and gold, the train texts to annotate, and its scoring."""

    name: str
    answer_tokens: int  # what the teacher may answer with
    scoring: str  # how students are scored, for the page
    scorings: tuple[str, ...]  # the scorings every local model gets; the teacher gets "generated"
    kd_arm: bool  # whether the KD arm applies (it is judged on the held-out NLL of label answers)
    balances_classes: bool  # whether its examples carry a class_label the trainer balances by

    def __init__(self, data_dir: Path, val_posts: int, part: str = "reporting") -> None:
        self.spec, self.format = task_spec(self.name), task_format(self.name)
        self.metric = self.spec.primary_metric
        val = read_split(self.spec, data_dir, self.spec.eval_path)
        items = self._texts(val)
        parts = {name: split_val(len(items), name) for name in SPLITS}
        self.part = part
        index = parts[part][sample_items(len(parts[part]), val_posts, 0)]
        self.val_texts, self.gold = [items[i] for i in index], self._gold(val, index)
        self.val_source, self.eval_posts = val.source, EvalPosts({val.source: items})  # exact and near-duplicates
        rule = f"seed-0 permutation of {val.source}: first {TUNING_SHARE:.0%} tuning, the rest reporting"
        self.splits = {name: {"posts": len(parts[name]), "rule": rule} for name in SPLITS} | {
            "scored": part,
            "scored_posts": len(index),
        }
        self.messages = [self.format.messages(t) for t in self.val_texts]  # what every model is asked
        train = read_split(self.spec, data_dir, self.spec.train_paths, train=True)  # texts only: labels never read
        self.train_texts, self.train_source = self._texts(train), train.source

    @property
    def count_names(self) -> list[str]:
        """What :meth:`counts` counts, in order (the label or entity-type words)."""
        return list(self.format.words)

    def class_label(self, annotation: Annotation) -> str | None:
        """What the trainer balances classes by (None: not balanced)."""
        return None

    def label_index(self, annotations: list[Annotation]) -> np.ndarray | None:
        """Per annotation its label (-1 where unusable), for the held-out teacher NLL; None where there is none."""
        return None

    def held_out_messages(self, posts: list[str]) -> list:
        return []


class SentimentTask(EfficacyTask):
    name = "tweeteval_sentiment"
    answer_tokens = 16
    kd_arm = True
    balances_classes = True
    scoring = (
        "generated (greedy answer parsed for a label), calibrated label log-likelihood (content-free prompts "
        "N/A, '', [MASK]) and raw label log-likelihood"
    )
    scorings = ("generated", "calibrated", "raw")

    def __init__(self, data_dir: Path, val_posts: int, part: str = "reporting") -> None:
        super().__init__(data_dir, val_posts, part)
        self.content_free = content_free_messages(self.format.messages)

    @staticmethod
    def _texts(data) -> list[str]:
        return list(data.texts)

    @staticmethod
    def _gold(data, index: np.ndarray) -> np.ndarray:
        return data.labels[index]

    def class_label(self, annotation: Annotation) -> str | None:
        return class_label(self.name, list(annotation.labels))

    def label_index(self, annotations: list[Annotation]) -> np.ndarray:
        return np.array([a.labels[0] if a.reason is None else -1 for a in annotations], dtype=int)

    def held_out_messages(self, posts: list[str]) -> list:
        return [self.format.messages(t) for t in posts]

    def scores(self, predicted: np.ndarray) -> ClassificationScores:
        return ClassificationScores(self.gold, predicted, len(self.format.words), labels=tuple(self.format.words))

    def teacher_predictions(self, annotations: list[Annotation]) -> np.ndarray:
        return self.label_index(annotations)

    def counts(self, predicted: np.ndarray) -> list[int]:
        return np.bincount(predicted[predicted >= 0], minlength=len(self.format.words)).tolist()

    def annotation_counts(self, annotations: list[Annotation]) -> list[int]:
        return self.counts(self.label_index(annotations))

    def predict(self, student: LocalStudent, variant: str, held_out: list) -> Prediction:
        words = list(self.format.words)
        with student.using(variant):
            items = student.label_logprobs(self.messages, words)
            free = student.label_logprobs(self.content_free, words)
            held = student.label_logprobs(held_out, words) if held_out else None
            answers = student.generate(self.messages, self.answer_tokens)
        generated, _ = parsed_answers(answers, words, multi_label=False)  # as the report reads a generated answer
        scorings = {
            "generated": generated,
            "calibrated": calibrate(items, free).argmax(axis=1),
            "raw": items.argmax(1),
        }
        return Prediction(scorings, held)


class EntityTask(EfficacyTask):
    name = "btc"
    answer_tokens = EvaluationConfig.model_fields["ner_max_new_tokens"].default
    kd_arm = False
    balances_classes = False
    scoring = "entity F1 (exact type and span) of greedy answers parsed as the report parses them"
    scorings = ("generated",)

    def __init__(self, data_dir: Path, val_posts: int, part: str = "reporting") -> None:
        super().__init__(data_dir, val_posts, part)
        self.type_of_word = dict(zip(self.format.words, self.format.labels))

    @staticmethod
    def _texts(data) -> list[str]:
        return [" ".join(tokens) for tokens in data.tokens]

    @staticmethod
    def _gold(data, index: np.ndarray) -> list[list[str]]:
        return [data.tags[i] for i in index]

    def scores(self, predicted: list[list[str]]) -> NerScores:
        return NerScores.from_tags(self.gold, predicted)

    def _tags(self, spans_per_post) -> list[list[str]]:
        return [
            spans_to_tags(text.split(), list(spans), self.type_of_word)[0]
            for text, spans in zip(self.val_texts, spans_per_post)
        ]

    def teacher_predictions(self, annotations: list[Annotation]) -> list[list[str]]:
        """An unusable answer tags nothing (as the report scores an unparseable one)."""
        return self._tags(a.spans if a.reason is None else () for a in annotations)

    def counts(self, predicted: list[list[str]]) -> list[int]:
        """Entities per type (B- tags), in the format's order."""
        begins = [tag[2:] for row in predicted for tag in row if tag.startswith("B-")]
        return [begins.count(label) for label in self.format.labels]

    def annotation_counts(self, annotations: list[Annotation]) -> list[int]:
        kinds = [kind for a in annotations if a.reason is None for kind, _ in a.spans]
        return [kinds.count(word) for word in self.format.words]

    def predict(self, student: LocalStudent, variant: str, held_out: list) -> Prediction:
        with student.using(variant):
            answers = student.generate(self.messages, self.answer_tokens)
        # as the report reads them: a line the parser cannot read, or a span not in the post, spoils only itself
        tags = self._tags(parse_entity_lines(answer, list(self.format.words)).spans for answer in answers)
        return Prediction({"generated": tags})


EFFICACY_TASKS = {task.name: task for task in (SentimentTask, EntityTask)}
