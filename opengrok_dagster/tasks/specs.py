"""The SNS tasks the report knows: where their files are, how to read and prompt them, how they are scored.

Paths are relative to the data directory and may be overridden per task, so the withheld test splits run
through the same code (e.g. ``tweeteval/sentiment/test`` or ``wnut17/emerging.test.annotated``); a path of
the form ``hf:<dataset>:<config>:<split>`` loads that split from the Hugging Face hub instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from opengrok_dagster.tasks.datasets import (
    ClassificationData,
    DatasetError,
    MultiLabelData,
    NerData,
    file_digest,
    read_conll,
    read_semeval_tsv,
    read_topic_jsonl,
    read_tweeteval,
)
from opengrok_dagster.tasks.formats import (
    ENTITY_WORDS,
    NER_QUESTION,
    SENTIMENT_QUESTION,
    TASK_FORMATS,
    TOPIC_QUESTION,
    word_for,
)
from opengrok_dagster.tasks.hub import is_hub_split, load_hub_split


READERS = {
    "tweeteval": read_tweeteval,
    "semeval_tsv": read_semeval_tsv,
    "topic_jsonl": read_topic_jsonl,
    "conll": read_conll,
}
KIND_OF_FORMAT = {
    "tweeteval": "classification",
    "semeval_tsv": "classification",
    "topic_jsonl": "multilabel",
    "conll": "ner",
}


@dataclass(frozen=True)
class ExternalReference:
    """A published number on the task's *test* split, for context only: never computed by us."""

    system: str
    value: float
    source: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    format: str
    eval_path: str
    train_paths: tuple[str, ...]
    primary_metric: str
    question: str  # what the prompt asks about the post
    label_words: dict[str, str] | None = None  # dataset label -> the word the prompt uses
    references: tuple[ExternalReference, ...] = ()
    train_format: str | None = None  # when the train split comes in another format (TweetEval sentiment: SemEval TSV)

    @property
    def kind(self) -> str:
        return KIND_OF_FORMAT[self.format]


_TWEETEVAL = "Barbieri et al. 2020, TweetEval (Findings of EMNLP 2020), test set"
_TWEETEVAL_README = "cardiffnlp/tweeteval README leaderboard, test set"
_SEMEVAL_TRAIN = ("semeval2017_task4a/twitter-2013train-A.tsv", "semeval2017_task4a/twitter-2016train-A.tsv")


def _tweeteval(task: str, question: str, metric: str, references=(), words=None) -> TaskSpec:
    return TaskSpec(
        f"tweeteval_{task.replace('/', '_')}",
        "tweeteval",
        f"tweeteval/{task}/val",
        (f"tweeteval/{task}/train",),
        metric,
        question,
        words,
        tuple(references),
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "tweeteval_sentiment",
            "tweeteval",
            "tweeteval/sentiment/val",
            _SEMEVAL_TRAIN,
            "macro_recall",
            SENTIMENT_QUESTION,
            train_format="semeval_tsv",
            references=(
                ExternalReference("RoBERTa-Retrained", 0.726, _TWEETEVAL),
                ExternalReference("TimeLMs-2021", 0.737, _TWEETEVAL_README),
            ),
        ),
        TaskSpec(
            "semeval_sentiment",
            "semeval_tsv",
            "semeval2017_task4a/twitter-2016devtest-A.tsv",
            _SEMEVAL_TRAIN,
            "macro_recall",
            SENTIMENT_QUESTION,
        ),
        TaskSpec(
            "tweet_topic",
            "topic_jsonl",
            "tweet_topic_xl/en/en_validation.jsonl",
            ("tweet_topic_xl/en/en_train.jsonl",),
            "macro_f1",
            TOPIC_QUESTION,
        ),
        TaskSpec(
            "wnut17",
            "conll",
            "wnut17/emerging.dev.conll",
            ("wnut17/wnut17train.conll",),
            "f1",
            NER_QUESTION,
            references=(
                ExternalReference(
                    "UH-RiTUAL (first in the WNUT-17 shared task)",
                    0.4186,
                    "Aguilar et al. 2017, WNUT (ACL Anthology W17-4419), entity F1, test set",
                ),
                ExternalReference(
                    "CL-KL",
                    0.6045,
                    "Wang et al. 2021, ACL, 'Improving Named Entity Recognition by External Context "
                    "Retrieving and Cooperative Learning', test set",
                ),
            ),
        ),
        TaskSpec(
            "btc",
            "conll",
            "broad_twitter_corpus/btc.dev",
            ("broad_twitter_corpus/btc.train",),
            "f1",
            NER_QUESTION,
            {k: ENTITY_WORDS[k] for k in ("PER", "ORG", "LOC")},
        ),
        TaskSpec(
            "tweebank_ner",
            "conll",
            "tweebank_ner/dev.bio",
            ("tweebank_ner/train.bio",),
            "f1",
            NER_QUESTION,
            ENTITY_WORDS,
        ),
        _tweeteval("emotion", "Which emotion does this post express?", "macro_f1"),
        _tweeteval(
            "hate",
            "Is this post hate speech against immigrants or women?",
            "macro_f1",
            words={"not-hate": "not hate", "hate": "hate"},
        ),
        _tweeteval(
            "offensive",
            "Is this post offensive?",
            "macro_f1",
            words={"not-offensive": "not offensive", "offensive": "offensive"},
        ),
        _tweeteval(
            "irony", "Is this post ironic?", "f1_class_1", words={"non_irony": "not ironic", "irony": "ironic"}
        ),
        *(
            _tweeteval(f"stance/{target}", f"What is the stance of this post towards {subject}?", "f1_against_favor")
            for target, subject in (
                ("abortion", "legal abortion"),
                ("atheism", "atheism"),
                ("climate", "climate change being a concern"),
                ("feminist", "feminism"),
                ("hillary", "Hillary Clinton"),
            )
        ),
    )
}
DEFAULT_TASKS = ("tweeteval_sentiment", "tweet_topic", "wnut17", "btc")


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise DatasetError(f"unknown evaluation task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def read_split(
    spec: TaskSpec, data_dir: Path | None, relative: str | tuple[str, ...], *, train: bool = False
) -> ClassificationData | MultiLabelData | NerData:
    """Read one split of ``spec``: a path (or, for SemEval TSV, several) under ``data_dir``, an absolute path, or a
    hub split ``hf:<dataset>:<config>:<split>`` (which needs no data directory)."""
    relative = (relative,) if isinstance(relative, str) else tuple(relative)
    if len(relative) == 1 and is_hub_split(relative[0]):
        return load_hub_split(relative[0], spec.kind, tuple(spec.label_words or ()))
    if data_dir is None:
        raise DatasetError(
            f"task {spec.name}: {', '.join(relative)} is a path, but no data directory was found; set "
            "OPENGROK_DATA_DIR (or data_dir), or name a hub split hf:<dataset>:<config>:<split>"
        )
    paths = [data_dir / p for p in relative]
    file_format = (spec.train_format or spec.format) if train else spec.format
    reader = READERS[file_format]
    if file_format == "semeval_tsv":
        return replace(reader(paths), version=file_digest(*paths))
    if len(paths) != 1:
        raise DatasetError(
            f"task {spec.name} reads one file per split, got {len(paths)}: {', '.join(map(str, paths))}"
        )
    data = reader(paths[0])
    return replace(data, version=file_digest(Path(data.source)))


def label_words(spec: TaskSpec, names: tuple[str, ...]) -> list[str]:
    """The words the prompt offers and the scorer compares, one per dataset label, in label order.

    A task the teacher annotates posts for must read the labels of its format, so that the student is scored
    on the vocabulary it was trained with."""
    known = TASK_FORMATS.get(spec.name)
    if known is not None:
        if tuple(names) != known.labels:
            raise DatasetError(
                f"task {spec.name}: the split's labels {list(names)} are not the task's vocabulary {list(known.labels)} "
                "(which the teacher annotates with and the student is trained on); point the task at a split with those labels"
            )
        return list(known.words)
    words = spec.label_words or {}
    unknown = set(words) - set(names)
    if unknown:
        raise DatasetError(
            f"task {spec.name}: label words given for {sorted(unknown)}, which the data's mapping lacks ({list(names)})"
        )
    return [word_for(name, words) for name in names]
