"""Runs the evaluation: every task x every model on the same sampled items, bootstrap intervals, paired ablations."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from opengrok_dagster.evaluation.answers import AnswerCache
from opengrok_dagster.evaluation.api import ApiModel, EndpointFailure, EndpointSpec, Usage
from opengrok_dagster.evaluation.bootstrap import (
    Difference,
    Distribution,
    bootstrap,
    paired_difference,
    resample_indices,
)
from opengrok_dagster.evaluation.calibration import calibrate, content_free_messages
from opengrok_dagster.evaluation.local import DEFAULT_BATCH_TOKENS, LocalStudent, model_identity
from opengrok_dagster.evaluation.metrics import (
    AgreementScores,
    ClassificationScores,
    MultiLabelScores,
    NerScores,
    sentence_chrf,
)
from opengrok_dagster.evaluation.ner import spans_to_tags
from opengrok_dagster.evaluation.scoring import CLASSIFIER, SCORINGS, likeliest, parsed_answers
from opengrok_dagster.posts.leaks import EvalPosts, leak_counts, load_eval_posts
from opengrok_dagster.tasks.baselines import train_tfidf_classifier, trainable
from opengrok_dagster.tasks.datasets import DatasetError, resolve_data_dir
from opengrok_dagster.tasks.formats import (
    classification_messages,
    find_labels,
    ner_messages,
    parse_entity_lines,
    parse_single_label,
)
from opengrok_dagster.tasks.hub import is_hub_split
from opengrok_dagster.tasks.specs import DEFAULT_TASKS, TASKS, TaskSpec, label_words, read_split, task_spec


TEACHER = "teacher"
GOLD_BASELINE, TEACHER_BASELINE = "tfidf-lr:gold", "tfidf-lr:teacher"
AGREEMENT_TASK = "teacher_agreement"


class EvaluationConfig(BaseModel):
    """Sizes are items sampled per task (0 = the whole split); the same config and inputs give the same numbers.

    TweetEval sentiment defaults to 500 val posts, so that the 95% interval of the paired difference student - base
    on macro recall is at most +-0.06 wide: docs/efficacy.md measured +-0.052 on 300 posts for a student that
    disagrees with the base on most posts (the widest case), so about +-0.04 on 500 (width ~ 1/sqrt(n)).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] = Field(
        default=DEFAULT_TASKS, description=f"SNS tasks to evaluate; known: {', '.join(TASKS)}."
    )
    data_dir: str | None = Field(
        default=None,
        description="Data directory laid out like shared/data; unset = $OPENGROK_DATA_DIR, else ../shared/data beside "
        "the repository.",
    )
    eval_paths: dict[str, str] = Field(
        default_factory=dict,
        description="Per task, the split to evaluate, relative to data_dir (e.g. wnut17: "
        "wnut17/emerging.test.annotated).",
    )
    train_paths: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="Per task, the train file(s) of the TF-IDF baselines, relative to data_dir."
    )
    classification_examples: int = Field(
        default=100, description="Items sampled per classification/topic task (0 = the whole split)."
    )
    task_examples: dict[str, int] = Field(
        default_factory=lambda: {"tweeteval_sentiment": 500},
        description="Per task, items sampled instead of classification_examples/ner_examples (0 = the whole split); "
        "TweetEval sentiment's 500 keep the paired difference's 95% interval within +-0.06 (docs/efficacy.md).",
    )
    ner_examples: int = Field(default=6, description="Sentences sampled per NER task (0 = the whole split).")
    agreement_examples: int = Field(
        default=6, description="Held-out teacher responses sampled for teacher agreement (0 = all)."
    )
    seed: int = Field(default=0, description="Seed of the item sampling and the bootstrap.")
    resamples: int = Field(default=1000, description="Bootstrap resamples per interval.")
    confidence: float = Field(default=0.95, description="Confidence level of the intervals.")
    topic_threshold: float = Field(
        default=0.3, description="Normalised label probability above which a topic is predicted (besides the top one)."
    )
    ner_max_new_tokens: int = Field(default=40, description="Tokens generated per NER answer.")
    agreement_max_new_tokens: int = Field(default=48, description="Tokens the student generates per held-out prompt.")
    api_max_tokens: int = Field(
        default=32, description="Completion tokens per classification answer from an API model."
    )
    baseline_train_examples: int = Field(
        default=4000, description="Train items for the TF-IDF + LR baseline on gold labels (0 = all)."
    )
    teacher_label_examples: int = Field(
        default=16, description="Train texts the teacher labels for the TF-IDF + LR baseline on teacher labels."
    )
    torch_threads: int = Field(
        default=0,
        description="CPU threads for the local models (0 = torch's default; 1 is faster on a machine busy with other "
        "jobs).",
    )
    scorings: tuple[str, ...] = Field(
        default=SCORINGS,
        description="How local models' classification answers are scored, all reported side by side: 'generated' "
        "(greedy answer parsed for a label, as API models are scored), 'calibrated' (label likelihood divided by its "
        "likelihood after the content-free posts 'N/A', '', '[MASK]'), 'raw' (label likelihood).",
    )
    headline_scoring: str = Field(
        default="generated",
        description="The scoring of the summary, the distillation table and the plots: one every compared model has "
        "('generated' is the only one an API teacher without logprobs has); models without it are left out there.",
    )
    min_items: dict[str, int] = Field(
        default_factory=lambda: {"ner": 100, "multilabel": 100, "single": 100},
        description="Per task kind, the fewest items sampled that can measure anything; a task sampled fewer is not "
        "scored (a note says why and how to score it) rather than reported with an interval as wide as the metric.",
    )
    example_posts: int = Field(
        default=5, description="Example posts per classification task shown in the report with each model's answer."
    )
    device: str = Field(
        default="auto",
        description="Where the local student runs: 'auto' (cuda, then mps, then cpu), 'cuda', 'mps' or 'cpu'.",
    )
    precision: str = Field(
        default="auto",
        description="The local student's weights: 'auto' (bf16 on GPUs that have it, else fp16 on CUDA, fp32 on "
        "mps/cpu), 'bf16', 'fp16' or 'fp32'.",
    )
    batch_tokens: int = Field(
        default=DEFAULT_BATCH_TOKENS,
        description="Tokens per forward pass of the local student, padding and scored labels included (raise it on "
        "a GPU).",
    )
    endpoints: tuple[EndpointSpec, ...] = Field(
        default=(), description="Extra OpenAI-compatible models to compare; a failing one is reported, not fatal."
    )

    def model_post_init(self, context) -> None:
        for name in self.tasks:
            task_spec(name)
        for name in (*self.eval_paths, *self.train_paths):
            if name not in self.tasks:
                raise ValueError(
                    f"a split path is given for task {name!r}, which is not among the tasks evaluated ({', '.join(self.tasks)})"
                )
        for name, size in self.task_examples.items():
            if size < 0:
                raise ValueError(f"task_examples[{name!r}] must be >= 0 (0 = all), got {size}")
        counts = (
            "classification_examples",
            "ner_examples",
            "agreement_examples",
            "baseline_train_examples",
            "teacher_label_examples",
            "torch_threads",
            "example_posts",
        )
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {self.batch_tokens}")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = all), got {getattr(self, name)}")
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100 for a usable interval, got {self.resamples}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        unknown = [s for s in self.scorings if s not in SCORINGS]
        if unknown or not self.scorings:
            raise ValueError(f"scorings {list(self.scorings)}: choose one or more of {', '.join(SCORINGS)}")
        if self.headline_scoring not in self.scorings:
            raise ValueError(
                f"headline_scoring {self.headline_scoring!r} is not among the scorings {list(self.scorings)}: add it"
            )
        if not 0 < self.topic_threshold <= 1:
            raise ValueError(f"topic_threshold must be in (0, 1], got {self.topic_threshold}")


@dataclass
class ModelScore:
    model: str
    distribution: Distribution
    n: int
    unparseable_rate: float | None = None
    scoring: str = "generated"  # SCORINGS, or CLASSIFIER for the TF-IDF baselines


@dataclass
class PairedComparison:
    model: str
    compared_to: str
    metric: str
    difference: Difference
    scoring: str = "generated"


@dataclass
class ItemAnswers:
    """Each model's answer per item of a classification task, for the report's confusion matrices and examples:
    class indices (-1 unparseable), or for multi-label tasks boolean (items x labels) matrices."""

    texts: list[str]
    gold: np.ndarray
    words: list[str]
    multi_label: bool
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TaskResult:
    spec: TaskSpec | None  # None for teacher agreement
    name: str
    primary_metric: str
    source: str
    data_version: str
    total_items: int
    n: int
    scores: list[ModelScore] = field(default_factory=list)  # one per model: the headline scoring (or its only one)
    comparisons: list[PairedComparison] = field(default_factory=list)  # in the headline scoring
    # every model under every scoring that applies to it (the headline's included), and their comparisons
    all_scores: list[ModelScore] = field(default_factory=list)
    all_comparisons: list[PairedComparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    answers: ItemAnswers | None = None  # classification tasks only
    skipped: str | None = None  # why the task was not scored (too few items to measure anything), and how to score it


@dataclass
class EvaluationResults:
    config: EvaluationConfig
    data_dir: Path | None
    tasks: list[TaskResult]
    models: list[dict]
    notes: list[str]
    seconds: float
    throughput: dict = field(default_factory=dict)  # device, dtype, and posts/s of the local student per task
    api_usage: dict[str, Usage] = field(default_factory=dict)  # what each API model was sent, and its cost
    # the teacher serves the student's own base checkpoint: no student-versus-teacher comparison is meaningful
    self_distillation: bool = False


@dataclass
class Throughput:
    """Posts the local student handled and the seconds it took, per task (every variant summed)."""

    posts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, task: str, posts: int, seconds: float) -> None:
        self.posts[task] = self.posts.get(task, 0) + posts
        self.seconds[task] = self.seconds.get(task, 0.0) + seconds

    def per_second(self) -> dict[str, float]:
        return {task: round(self.posts[task] / self.seconds[task], 2) for task in self.posts if self.seconds[task] > 0}


def sample_items(total: int, wanted: int, seed: int) -> np.ndarray:
    """Sorted indices of ``wanted`` items drawn without replacement (all of them when 0 or more than there are)."""
    if wanted == 0 or wanted >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=wanted, replace=False))


def ablation_pairs(models: list[str]) -> list[tuple[str, str]]:
    """Distillation (each adapter vs the base student) and the mask (each masked adapter vs mask 'none')."""
    pairs = [(m, LocalStudent.BASE) for m in models if m.startswith("lora:")]
    if "lora:none" in models:
        pairs += [(m, "lora:none") for m in models if m.startswith("lora:") and m != "lora:none"]
    return pairs


def finish_task(
    result: TaskResult,
    scored: list[tuple[str, str, object, float | None]],
    metrics: tuple[str, ...],
    config,
    headline: str | None = None,
) -> TaskResult:
    """Bootstraps every (model, scoring) of ``scored`` (model, scoring, scores with ``metrics(idx)`` and ``n``,
    unparseable rate) on one shared resample matrix, compares models within each scoring, and puts each model's
    ``headline`` scoring (default the config's; or, lacking it, a classifier's only one) in ``scores``."""
    headline = headline or config.headline_scoring
    indices = resample_indices(result.n, config.resamples, config.seed)
    for model, scoring, scores, unparseable in scored:
        result.all_scores.append(ModelScore(model, bootstrap(scores, indices), scores.n, unparseable, scoring))
    for scoring in dict.fromkeys(s.scoring for s in result.all_scores):
        by_model = {s.model: s.distribution for s in result.all_scores if s.scoring == scoring}
        for model, baseline in ablation_pairs(list(by_model)):
            for metric in metrics:
                difference = paired_difference(by_model[model], by_model[baseline], metric, config.confidence)
                result.all_comparisons.append(PairedComparison(model, baseline, metric, difference, scoring))
    result.scores = [s for s in result.all_scores if s.scoring in (headline, CLASSIFIER)]
    result.comparisons = [c for c in result.all_comparisons if c.scoring == headline]
    left_out = sorted({s.model for s in result.all_scores} - {s.model for s in result.scores})
    if left_out:
        result.notes.append(
            f"{', '.join(left_out)} not scored by {headline} (the headline scoring), so left out of the summary: "
            "see the scorings side by side"
        )
    return result


def _without_eval_posts(train, eval_posts: EvalPosts | None):
    """The train split without the posts of any evaluated split, exact or near-duplicate (a baseline trained on
    them scores inflated), and how many of each kind were left out."""
    leaks = eval_posts.matches(train.texts) if eval_posts is not None else [None] * len(train.texts)
    keep = np.array([leak is None for leak in leaks], dtype=bool)
    if keep.all():
        return train, leak_counts(leaks)
    kept = replace(train, texts=[t for t, k in zip(train.texts, keep) if k], labels=train.labels[keep])
    return kept, leak_counts(leaks)


class Evaluation:
    def __init__(
        self,
        config: EvaluationConfig,
        student: LocalStudent | None,
        api_models: list[ApiModel],
        log: Callable[[str], None] = print,
        answers: AnswerCache | None = None,
    ) -> None:
        self.config = config
        self.student = student
        self.api_models = list(api_models)
        self.answers = answers
        self.failed_endpoints: dict[str, str] = {}
        self.request_counts: dict[str, list[int]] = {}  # model -> [failed, sent, reused], over the whole run
        self.usage: dict[str, Usage] = {}  # model -> what was sent to it and its cost, over the whole run
        self.throughput = Throughput()
        self.eval_posts: EvalPosts | None = None  # every evaluated task's eval posts
        self.log = log

    # -- model answers ---------------------------------------------------------------------------------
    def _api_answers(self, model: ApiModel, messages, max_tokens: int) -> list[str | None] | None:
        """The model's answers (None for a failed request), or None once the endpoint has failed outright."""
        if model.name in self.failed_endpoints:
            return None
        started = time.monotonic()
        try:
            answers, failed, reused, usage = model.complete_all(messages, max_tokens, self.answers)
            self.log(
                f"{model.name} answered {len(messages) - failed} of {len(messages)} prompts in {time.monotonic() - started:.1f}s"
                + (f" ({reused} answers reused from earlier runs)" if reused else "")
            )
        except EndpointFailure as exc:
            self.failed_endpoints[model.name] = str(exc)
            self.log(f"endpoint {model.name} left out of the report: {exc}")
            return None
        counts = self.request_counts.setdefault(model.name, [0, 0, 0])
        counts[0] += failed
        counts[1] += len(messages)
        counts[2] += reused
        self.usage.setdefault(model.name, Usage(usd=None if model.prices is None else 0.0)).add(usage)
        return answers

    def _local_variants(self) -> list[str]:
        return self.student.variants if self.student is not None else []

    def _classify(self, spec: TaskSpec, texts: list[str], words: list[str], multi_label: bool):
        """Yields (model, scoring, predictions, unparseable_rate) for every local variant under every configured
        scoring, and for every API model by generation (the one scoring an endpoint without logprobs allows)."""
        messages = [classification_messages(spec.question, t, words, multi_label) for t in texts]
        for variant in self._local_variants():
            started = time.monotonic()
            with self.student.using(variant):
                yield from self._local_scorings(spec, variant, messages, words, multi_label)
            seconds = time.monotonic() - started
            self.throughput.add(spec.name, len(texts), seconds)
            self.log(
                f"{spec.name}: {variant} scored {len(texts)} items ({', '.join(self.config.scorings)}) in {seconds:.1f}s"
            )
        for model in self.api_models:
            answers = self._api_answers(model, messages, self.config.api_max_tokens)
            if answers is not None:
                yield (model.name, "generated", *parsed_answers(answers, words, multi_label))

    def _local_scorings(self, spec: TaskSpec, variant: str, messages, words: list[str], multi_label: bool):
        """The active local variant's predictions under each configured scoring (label likelihoods computed once)."""
        scorings = self.config.scorings
        if "calibrated" in scorings or "raw" in scorings:
            logprobs = self.student.label_logprobs(messages, words)
            if "calibrated" in scorings:
                content_free = content_free_messages(
                    lambda post: classification_messages(spec.question, post, words, multi_label)
                )
                calibrated = calibrate(logprobs, self.student.label_logprobs(content_free, words))
                yield variant, "calibrated", likeliest(calibrated, multi_label, self.config.topic_threshold), None
            if "raw" in scorings:
                yield variant, "raw", likeliest(logprobs, multi_label, self.config.topic_threshold), None
        if "generated" in scorings:
            answers = self.student.generate(messages, self.config.api_max_tokens)
            yield (variant, "generated", *parsed_answers(answers, words, multi_label))

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
        train_relative = tuple(self.config.train_paths.get(spec.name) or spec.train_paths)
        if data_dir is None and not (len(train_relative) == 1 and is_hub_split(train_relative[0])):
            notes.append(
                "the TF-IDF baselines were not trained: no data directory for the train split; name a hub split in train_paths"
            )
            return
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
        teacher = next((m for m in self.api_models if m.name == TEACHER), None)
        if teacher is None or cfg.teacher_label_examples == 0:
            return
        chosen = sample_items(len(train.texts), cfg.teacher_label_examples, cfg.seed + 1)
        texts = [train.texts[i] for i in chosen]
        answers = self._api_answers(
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

    def _ner(self, spec: TaskSpec, tokens: list[list[str]], entity_types: tuple[str, ...]):
        """Yields (model, predicted tag rows, share of answer lines that were unusable)."""
        words = label_words(spec, entity_types)
        type_of_word = dict(zip(words, entity_types))
        messages = [ner_messages(spec.question, t, words) for t in tokens]

        def tag(answers: list[str | None]):
            rows, unusable, total = [], 0, 0
            for sentence, answer in zip(tokens, answers):
                parsed = parse_entity_lines(answer, words)
                tags, missing = spans_to_tags(sentence, parsed.spans, type_of_word)
                rows.append(tags)
                unusable += parsed.unparsed_lines + missing
                total += parsed.unparsed_lines + len(parsed.spans)
            return rows, (unusable / total if total else 0.0)

        for variant in self._local_variants():
            started = time.monotonic()
            with self.student.using(variant):
                answers = self.student.generate(messages, self.config.ner_max_new_tokens)
            seconds = time.monotonic() - started
            self.throughput.add(spec.name, len(tokens), seconds)
            self.log(f"{spec.name}: {variant} tagged {len(tokens)} sentences in {seconds:.1f}s")
            yield (variant, *tag(answers))
        for model in self.api_models:
            answers = self._api_answers(model, messages, self.config.ner_max_new_tokens)
            if answers is not None:
                yield (model.name, *tag(answers))

    # -- tasks -------------------------------------------------------------------------------------------
    def _finish(
        self, result: TaskResult, scored: list[tuple[str, str, object, float | None]], metrics: tuple[str, ...]
    ) -> TaskResult:
        return finish_task(result, scored, metrics, self.config)

    def _too_few(self, spec: TaskSpec, sampled: int, total: int) -> str | None:
        """Why a task sampled this small cannot measure anything, and how to score it; None when it can."""
        kind = spec.kind if spec.kind in ("ner", "multilabel") else "single"
        least = self.config.min_items.get(kind, 0)
        if sampled >= least or sampled >= total:
            return None
        setting = "ner_examples" if spec.kind == "ner" else "classification_examples"
        return (
            f"{spec.name} not scored: {sampled} {'sentences' if spec.kind == 'ner' else 'posts'} sampled cannot measure "
            f"{spec.primary_metric} (fewer than min_items[{kind}] = {least}: the interval would span most of the "
            f"metric's range); set task_examples[{spec.name}] or {setting} to {least} or more (0 = the whole split, "
            f"{total} items) to score it"
        )

    def run_task(self, spec: TaskSpec, data_dir: Path | None) -> TaskResult:
        cfg = self.config
        relative = cfg.eval_paths.get(spec.name) or spec.eval_path
        data = read_split(spec, data_dir, relative)
        wanted = cfg.task_examples.get(
            spec.name, cfg.ner_examples if spec.kind == "ner" else cfg.classification_examples
        )
        total = len(data.tokens) if spec.kind == "ner" else len(data.texts)
        chosen = sample_items(total, wanted, cfg.seed)
        result = TaskResult(spec, spec.name, spec.primary_metric, data.source, data.version, total, len(chosen))
        result.skipped = self._too_few(spec, len(chosen), total)
        if result.skipped:
            self.log(result.skipped)
            return result
        self.log(f"{spec.name}: {len(chosen)} of {total} items from {data.source} (seed {cfg.seed})")
        scored: list[tuple[str, str, object, float | None]] = []
        if spec.kind == "ner":
            gold = [data.tags[i] for i in chosen]
            for model, predicted, unusable in self._ner(spec, [data.tokens[i] for i in chosen], data.entity_types):
                scored.append((model, "generated", NerScores.from_tags(gold, predicted), unusable))
            return self._finish(result, scored, (spec.primary_metric,))
        multi_label = spec.kind == "multilabel"
        words = label_words(spec, data.label_names)
        texts, gold = [data.texts[i] for i in chosen], data.labels[chosen]
        result.answers = ItemAnswers(texts, gold, words, multi_label)

        def scores_of(predicted):
            if multi_label:
                return MultiLabelScores(gold, predicted)
            return ClassificationScores(gold, predicted, len(words), spec.primary_metric, tuple(words))

        for model, scoring, predicted, unparseable in self._classify(spec, texts, words, multi_label):
            scored.append((model, scoring, scores_of(predicted), unparseable))
            if scoring == cfg.headline_scoring:
                result.answers.predictions[model] = predicted
        for model, predicted in self._baselines(
            spec, data_dir, texts, data.label_names, words, multi_label, result.notes
        ):
            scored.append((model, CLASSIFIER, scores_of(predicted), None))
            result.answers.predictions[model] = predicted
        return self._finish(result, scored, (spec.primary_metric,))

    def run_agreement(self, heldout: pd.DataFrame) -> TaskResult:
        """Student vs the teacher's held-out responses (never trained on): chrF of greedy generations, perplexity."""
        cfg = self.config
        rows = heldout.reset_index(drop=True)
        chosen = sample_items(len(rows), cfg.agreement_examples, cfg.seed)
        sample = rows.iloc[chosen]
        digest = pd.util.hash_pandas_object(sample[["example_id", "response"]], index=False).sum()
        result = TaskResult(
            None,
            AGREEMENT_TASK,
            "chrf",
            "filtered_responses (split == heldout)",
            f"{int(digest) & 0xFFFFFFFFFFFF:012x}",
            len(rows),
            len(chosen),
        )
        self.log(f"{AGREEMENT_TASK}: {len(chosen)} of {len(rows)} held-out teacher responses (seed {cfg.seed})")
        messages = [
            ([{"role": "system", "content": s}] if isinstance(s, str) and s.strip() else [])
            + [{"role": "user", "content": p}]
            for s, p in zip(sample["system_prompt"], sample["prompt"])
        ]
        references = [str(r) for r in sample["response"]]
        scored = []
        for variant in self._local_variants():
            started = time.monotonic()
            with self.student.using(variant):
                generated = self.student.generate(messages, cfg.agreement_max_new_tokens)
                nll, tokens = self.student.response_nll(messages, references)
            seconds = time.monotonic() - started
            self.throughput.add(AGREEMENT_TASK, len(messages), seconds)
            self.log(f"{AGREEMENT_TASK}: {variant} in {seconds:.1f}s")
            scores = AgreementScores(sentence_chrf(generated, references), nll, tokens)
            scored.append((variant, "generated", scores, None))
        result.notes.append(
            f"student generations are greedy and capped at {cfg.agreement_max_new_tokens} new tokens, so chrF against longer "
            "teacher responses is bounded above; perplexity scores the teacher's full response"
        )
        return self._finish(result, scored, ("chrf", "perplexity"))

    def compared_models(self) -> list[dict]:
        """What each model name in the report stands for, with the version of what was loaded."""
        models = []
        if self.student is not None:
            models.append(
                {
                    "model": LocalStudent.BASE,
                    "what": "student without adapter (no distillation)",
                    "source": self.student.model_path,
                    "version": "",
                }
            )
            for c in self.student.checkpoints:
                facts = ", ".join(
                    f"{k}={c.record[k]}" for k in ("global_step", "best_val_loss", "examples") if k in c.record
                )
                models.append(
                    {
                        "model": c.variant,
                        "what": f"student + LoRA, mask mode {c.mask_mode}",
                        "source": f"{c.adapter_dir} ({facts})",
                        "version": c.version,
                    }
                )
        models += [
            {
                "model": m.name,
                "what": "OpenAI-compatible endpoint, greedy"
                + (" (failed: see notes)" if m.name in self.failed_endpoints else ""),
                "source": m.description,
                "version": "",
            }
            for m in self.api_models
        ]
        models.append(
            {
                "model": GOLD_BASELINE,
                "what": "TF-IDF + logistic regression on the task's train split",
                "source": "train split",
                "version": "",
            }
        )
        models.append(
            {
                "model": TEACHER_BASELINE,
                "what": "TF-IDF + logistic regression on teacher labels of train texts",
                "source": TEACHER,
                "version": "",
            }
        )
        return models

    def run(self, heldout: pd.DataFrame | None, notes: list[str] | None = None) -> EvaluationResults:
        started = time.monotonic()
        cfg = self.config
        notes = list(notes or [])
        data_dir = resolve_data_dir(cfg.data_dir)
        runnable = [name for name in cfg.tasks if data_dir is not None or is_hub_split(cfg.eval_paths.get(name, ""))]
        if len(runnable) < len(cfg.tasks):
            notes.append(
                f"SNS tasks {', '.join(n for n in cfg.tasks if n not in runnable)} were not evaluated: no data directory "
                "was found. Set OPENGROK_DATA_DIR (or the data_dir setting) to a folder laid out like shared/data "
                "(tweeteval/, wnut17/, ...), or name hub splits (hf:<dataset>:<config>:<split>) in eval_paths."
            )
        self.eval_posts = load_eval_posts(runnable, data_dir, cfg.eval_paths)
        tasks: list[TaskResult] = []
        for result in (self.run_task(task_spec(name), data_dir) for name in runnable):
            if result.skipped:
                notes.append(result.skipped)  # left out of the report's tables, not shown as a score of 0
            else:
                tasks.append(result)
        if self.student is None:
            notes.append("no local student was evaluated")
        elif heldout is None or heldout.empty:
            notes.append("teacher agreement was not measured: filtered_responses has no held-out rows")
        else:
            tasks.append(self.run_agreement(heldout))
        notes.extend(
            f"endpoint {name} failed and is left out: {reason}" for name, reason in self.failed_endpoints.items()
        )
        for name, (failed, sent, reused) in self.request_counts.items():
            if failed:
                notes.append(
                    f"{name}: {failed} of {sent} requests failed after retries; they count as unparseable answers"
                )
            if reused:
                notes.append(
                    f"{name}: {reused} of {sent} answers reused from earlier runs (same model, prompt and token "
                    "budget, greedy decoding); set reuse_api_answers to false to ask again"
                )
        self_distillation = self._self_distillation()
        if self_distillation:
            notes.append(
                f"self-distillation: the teacher serves the student's own base checkpoint "
                f"({model_identity(self.student.model_path)}), so the teacher row is that checkpoint answering by "
                "generation, not a stronger model: no student-versus-teacher comparison is made"
            )
        throughput = self._throughput_summary()
        if throughput:
            rates = ", ".join(f"{task} {rate:g}" for task, rate in throughput["posts_per_second"].items())
            notes.append(
                f"local student on {throughput['device']} ({throughput['dtype']}), "
                f"posts per second per variant: {rates}"
            )
        seconds = time.monotonic() - started
        return EvaluationResults(
            cfg,
            data_dir,
            tasks,
            self.compared_models(),
            notes,
            seconds,
            throughput,
            dict(self.usage),
            self_distillation=self_distillation,
        )

    def _self_distillation(self) -> bool:
        teacher = next((m for m in self.api_models if m.name == TEACHER), None)
        if teacher is None or teacher.weights is None or self.student is None:
            return False
        return model_identity(teacher.weights) == model_identity(self.student.model_path)

    def _throughput_summary(self) -> dict:
        if self.student is None or not self.throughput.posts:
            return {}
        student = self.student
        return {"device": student.device, "dtype": student.dtype, "posts_per_second": self.throughput.per_second()}
