"""Classification tasks (single-label and multi-label topics): every local variant under every configured scoring,
every API model by generation, and two TF-IDF + LR baselines, one on gold train labels, one on the teacher's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from opengrok_dagster.evaluation.calibration import calibrate, content_free_messages
from opengrok_dagster.evaluation.compared_models import ComparedModels
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.metrics import ClassificationScores, MultiLabelScores
from opengrok_dagster.evaluation.results import ItemAnswers, TaskResult, finish_task, sample_items
from opengrok_dagster.evaluation.scoring import CALIBRATED, CLASSIFIER, GENERATED, RAW, likeliest, parsed_answers
from opengrok_dagster.evaluation.scoring_choice import LABEL_SCORINGS, ScoringChoice, tuning_items
from opengrok_dagster.posts.leaks import EvalPosts, leak_counts
from opengrok_dagster.tasks.baselines import train_tfidf_classifier, trainable
from opengrok_dagster.tasks.datasets import DatasetError
from opengrok_dagster.tasks.formats import classification_messages, find_labels, parse_single_label
from opengrok_dagster.tasks.hub import is_hub_split
from opengrok_dagster.tasks.specs import TaskSpec, label_words, read_split


GOLD_BASELINE, TEACHER_BASELINE = "tfidf-lr:gold", "tfidf-lr:teacher"


def _without_eval_posts(train, eval_posts: EvalPosts | None):
    """The train split without the posts of any evaluated split, exact or near-duplicate (a baseline trained on
    them scores inflated), and how many of each kind were left out."""
    leaks = eval_posts.matches(train.texts) if eval_posts is not None else [None] * len(train.texts)
    keep = np.array([leak is None for leak in leaks], dtype=bool)
    if keep.all():
        return train, leak_counts(leaks)
    kept = replace(train, texts=[t for t, k in zip(train.texts, keep) if k], labels=train.labels[keep])
    return kept, leak_counts(leaks)


def _scores(spec: TaskSpec, gold: np.ndarray, predicted: np.ndarray, words: list[str]):
    if spec.kind == "multilabel":
        return MultiLabelScores(gold, predicted)
    return ClassificationScores(gold, predicted, len(words), spec.primary_metric, tuple(words))


class _TuningPosts:
    """The posts a task's label scoring is chosen on (``scoring_choice``): their prompts, gold labels, and the
    choice made for each local variant."""

    def __init__(self, spec: TaskSpec, messages: list, gold: np.ndarray, words: list[str]) -> None:
        self.spec, self.messages, self.gold, self.words = spec, messages, gold, words
        self.choices: list[ScoringChoice] = []

    def choose(self, variant: str, predicted: dict[str, np.ndarray]) -> None:
        metric = self.spec.primary_metric
        values = {
            scoring: _scores(self.spec, self.gold, labels, self.words).metrics()[metric]
            for scoring, labels in predicted.items()
        }
        self.choices.append(ScoringChoice(variant, metric, len(self.gold), values))


class Classification:
    """Scores one classification task on its sampled items; ``eval_posts`` (every evaluated task's posts) are
    kept out of the baselines' training data."""

    def __init__(self, config: EvaluationConfig, models: ComparedModels, eval_posts: EvalPosts | None) -> None:
        self.config = config
        self.models = models
        self.eval_posts = eval_posts

    def score(self, result: TaskResult, data, chosen: np.ndarray, data_dir: Path | None) -> TaskResult:
        spec, cfg = result.spec, self.config
        multi_label = spec.kind == "multilabel"
        words = label_words(spec, data.label_names)
        texts, gold = [data.texts[i] for i in chosen], data.labels[chosen]
        result.answers = ItemAnswers(texts, gold, words, multi_label)
        tuning = self._tuning_items(result, data, chosen)
        scored: list[tuple[str, str, object, float | None]] = []
        for model, scoring, predicted, unparseable in self._classify(spec, texts, words, multi_label, tuning):
            scored.append((model, scoring, _scores(spec, gold, predicted, words), unparseable))
            if scoring == cfg.headline_scoring:
                result.answers.predictions[model] = predicted
        for model, predicted in self._baselines(
            spec, data_dir, texts, data.label_names, words, multi_label, result.notes
        ):
            scored.append((model, CLASSIFIER, _scores(spec, gold, predicted, words), None))
            result.answers.predictions[model] = predicted
        if tuning is not None:
            result.scoring_choices = tuning.choices
            result.notes.append(
                f"post_labels' label scoring ({' or '.join(LABEL_SCORINGS)}) is chosen per local model by "
                f"{spec.primary_metric} on {len(tuning.gold)} other posts of {data.source}, none of them reported "
                "here (scoring_tuning_examples)"
            )
        return finish_task(result, scored, (spec.primary_metric,), cfg)

    def _tuning_items(self, result: TaskResult, data, chosen: np.ndarray) -> _TuningPosts | None:
        """The posts each local model's label scoring is chosen on, or None where there is no choice to make."""
        cfg, spec = self.config, result.spec
        if self.models.student is None or not set(LABEL_SCORINGS) <= set(cfg.scorings):
            return None
        items = tuning_items(len(data.texts), chosen, cfg.scoring_tuning_examples, cfg.seed)
        if not len(items):
            return None
        texts = [data.texts[i] for i in items]
        words = label_words(spec, data.label_names)
        messages = [classification_messages(spec.question, t, words, spec.kind == "multilabel") for t in texts]
        return _TuningPosts(spec, messages, data.labels[items], words)

    def _classify(self, spec: TaskSpec, texts: list[str], words: list[str], multi_label: bool, tuning=None):
        """Yields (model, scoring, predictions, unparseable_rate) for every local variant under every configured
        scoring, and for every API model by generation (the one scoring an endpoint without logprobs allows)."""
        messages = [classification_messages(spec.question, t, words, multi_label) for t in texts]
        did, items = f"scored {len(texts)} items ({', '.join(self.config.scorings)})", len(texts)
        if tuning is not None:  # the tuning posts are scored in the same pass, and counted in the throughput
            did, items = f"{did}, and {len(tuning.gold)} tuning items by label likelihood", items + len(tuning.gold)
        for variant in self.models.each_variant(spec.name, items, did):
            yield from self._local_scorings(spec, variant, messages, words, multi_label, tuning)
        for model in self.models.api_models:
            answers = self.models.api_answers(model, messages, self.config.api_max_tokens)
            if answers is not None:
                yield (model.name, "generated", *parsed_answers(answers, words, multi_label))

    def _local_scorings(self, spec: TaskSpec, variant: str, messages, words: list[str], multi_label: bool, tuning):
        """The active local variant's predictions under each configured scoring (label likelihoods computed once,
        the tuning posts' in the same pass), and its label scoring chosen on the tuning posts."""
        scorings, student = self.config.scorings, self.models.student
        if CALIBRATED in scorings or RAW in scorings:
            extra = tuning.messages if tuning is not None else []
            logprobs = student.label_logprobs(messages + extra, words)
            by_scoring = {}
            if CALIBRATED in scorings:
                content_free = content_free_messages(
                    lambda post: classification_messages(spec.question, post, words, multi_label)
                )
                by_scoring[CALIBRATED] = calibrate(logprobs, student.label_logprobs(content_free, words))
            if RAW in scorings:
                by_scoring[RAW] = logprobs
            predicted = {
                scoring: likeliest(scores, multi_label, self.config.topic_threshold)
                for scoring, scores in by_scoring.items()
            }
            for scoring, labels in predicted.items():
                yield variant, scoring, labels[: len(messages)], None
            if tuning is not None:
                tuning.choose(variant, {scoring: labels[len(messages) :] for scoring, labels in predicted.items()})
        if GENERATED in scorings:
            answers = student.generate(messages, self.config.api_max_tokens)
            yield (variant, GENERATED, *parsed_answers(answers, words, multi_label))

    def _baselines(
        self,
        spec: TaskSpec,
        data_dir: Path | None,
        eval_texts: list[str],
        eval_names: tuple[str, ...],
        words: list[str],
        multi_label: bool,
        notes: list[str],
    ):
        """Yields (model, predictions) for TF-IDF + LR on gold train labels, and on teacher labels of train texts;
        a baseline that cannot be trained is explained in ``notes``."""
        train = self._train_split(spec, data_dir, eval_names, notes)
        if train is None:
            return
        cfg = self.config
        chosen = sample_items(len(train.texts), cfg.baseline_train_examples, cfg.seed)
        train_texts, train_labels = [train.texts[i] for i in chosen], train.labels[chosen]
        if trainable(train_labels):
            yield (
                GOLD_BASELINE,
                train_tfidf_classifier(train_texts, train_labels, cfg.seed)
                .predict(eval_texts)
                .astype(train_labels.dtype),
            )
        else:
            notes.append(
                f"{GOLD_BASELINE} not trained: the {len(train_texts)} train items sampled have a single class"
            )
        yield from self._teacher_baseline(spec, train, eval_texts, words, multi_label, notes)

    def _train_split(self, spec: TaskSpec, data_dir: Path | None, eval_names: tuple[str, ...], notes: list[str]):
        """The task's train split without evaluation posts, or None (with a note) where there is no data for it."""
        train_relative = tuple(self.config.train_paths.get(spec.name) or spec.train_paths)
        if data_dir is None and not (len(train_relative) == 1 and is_hub_split(train_relative[0])):
            notes.append(
                "the TF-IDF baselines were not trained: no data directory for the train split; name a hub split in train_paths"
            )
            return None
        train = read_split(spec, data_dir, train_relative, train=True)
        if tuple(train.label_names) != tuple(eval_names):
            raise DatasetError(
                f"task {spec.name}: the train split ({train.source}) has labels {list(train.label_names)} but the evaluation "
                f"split has {list(eval_names)}; point both at files with the same label mapping"
            )
        train, leaked = _without_eval_posts(train, self.eval_posts)
        if sum(leaked.values()):
            notes.append(
                f"{sum(leaked.values())} posts of the train split ({train.source}) are evaluation posts "
                f"({leaked['exact']} exact, {leaked['near_duplicate']} near-duplicates: token Jaccard >= 0.7 after "
                "normalisation) and were left out of the TF-IDF baselines' training data"
            )
        return train

    def _teacher_baseline(
        self, spec: TaskSpec, train, eval_texts: list[str], words: list[str], multi_label: bool, notes: list[str]
    ):
        """Yields the baseline trained on the teacher's labels of a sample of the train texts, when it can be."""
        cfg = self.config
        teacher = self.models.teacher()
        if teacher is None or cfg.teacher_label_examples == 0:
            return
        chosen = sample_items(len(train.texts), cfg.teacher_label_examples, cfg.seed + 1)
        texts = [train.texts[i] for i in chosen]
        answers = self.models.api_answers(
            teacher, [classification_messages(spec.question, t, words, multi_label) for t in texts], cfg.api_max_tokens
        )
        if answers is None:
            return
        if multi_label:
            labels = np.zeros((len(texts), len(words)), dtype=bool)
            for row, answer in enumerate(answers):
                labels[row, find_labels(answer or "", words)] = True
            usable = labels.any(axis=1)
        else:
            labels = np.array([parse_single_label(a, words) for a in answers])
            usable = labels >= 0
        texts, labels = [t for t, keep in zip(texts, usable) if keep], labels[usable]
        if trainable(labels):
            yield (
                TEACHER_BASELINE,
                train_tfidf_classifier(texts, labels, cfg.seed).predict(eval_texts).astype(labels.dtype),
            )
        else:
            notes.append(
                f"{TEACHER_BASELINE} not trained: {len(texts)} of the {cfg.teacher_label_examples} teacher answers named a label, "
                "too few classes to train on"
            )
