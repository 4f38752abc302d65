"""Splits from the Hugging Face hub, named ``hf:<dataset>:<config>:<split>`` wherever a split path is accepted.

``hf:cardiffnlp/tweet_eval:sentiment:test`` or ``hf:leondz/wnut_17::test`` (no config) load through
``datasets.load_dataset`` (the optional ``hub`` extra; online, or from the local hub cache) into the same
records the file readers give, so the evaluation cannot tell them apart. ``<dataset>`` may also be a local
folder laid out like a hub dataset repository. Columns: ``text`` + ``label`` (a class label, or a multi-hot
list for TweetTopic) for classification, ``tokens`` + ``ner_tags`` (or ``tags``) class labels for NER.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opengrok_dagster.tasks.datasets import (
    TOPIC_LABELS,
    ClassificationData,
    DatasetError,
    MultiLabelData,
    NerData,
)


PREFIX = "hf:"
INSTALL = "pip install 'opengrok-dagster[hub]' (the datasets package)"


@dataclass(frozen=True)
class HubSplit:
    dataset: str
    config: str | None
    split: str

    @classmethod
    def parse(cls, text: str) -> HubSplit:
        parts = text.removeprefix(PREFIX).split(":")
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise DatasetError(
                f"hub split {text!r} must read hf:<dataset>:<config>:<split>, e.g. "
                "hf:cardiffnlp/tweet_eval:sentiment:test or hf:leondz/wnut_17::test (no config)"
            )
        return cls(parts[0], parts[1] or None, parts[2])

    def __str__(self) -> str:
        return f"{PREFIX}{self.dataset}:{self.config or ''}:{self.split}"


def is_hub_split(path: str) -> bool:
    return str(path).startswith(PREFIX)


def load_hub_split(
    text: str, kind: str, label_keys: tuple[str, ...] = ()
) -> ClassificationData | MultiLabelData | NerData:
    """``kind`` is the task's kind; ``label_keys`` the task's own names for the classes, in class-index order,
    used where the hub names the same classes differently (TweetEval's ``non-hate`` for the files' ``not-hate``)."""
    split = HubSplit.parse(text)
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            f"{split}: loading from the Hugging Face hub needs the datasets package; {INSTALL}"
        ) from None
    try:
        dataset = datasets.load_dataset(split.dataset, split.config, split=split.split)
    except Exception as exc:  # offline, unknown dataset/config/split, gated repo: all say the same to the user
        raise DatasetError(
            f"{split}: could not be loaded from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:300]}); check the "
            "dataset id, config and split, the network (or HF_HUB_OFFLINE with a filled cache), or read the files by path"
        ) from None
    return from_hub_dataset(dataset, kind, str(split), label_keys)


def _class_names(dataset, column: str, source: str) -> list[str]:
    feature = dataset.features[column]
    feature = getattr(feature, "feature", feature)  # a sequence of class labels: its element
    names = getattr(feature, "names", None)
    if not names:
        raise DatasetError(
            f"{source}: column {column!r} is not a class label (it is {dataset.features[column]}); "
            "the report needs the label names"
        )
    return list(names)


def _require_columns(dataset, source: str, *alternatives: tuple[str, ...]) -> list[str]:
    chosen = []
    for options in alternatives:
        found = next((name for name in options if name in dataset.column_names), None)
        if found is None:
            raise DatasetError(f"{source}: has columns {dataset.column_names}; expected one of {list(options)}")
        chosen.append(found)
    return chosen


def from_hub_dataset(dataset, kind: str, source: str, label_keys: tuple[str, ...] = ()):
    version = getattr(dataset, "_fingerprint", "")[:12]
    if kind == "ner":
        tokens_column, tags_column = _require_columns(dataset, source, ("tokens",), ("ner_tags", "tags"))
        names = _class_names(dataset, tags_column, source)
        tags = [[names[i] for i in row] for row in dataset[tags_column]]
        types = sorted({name[2:] for name in names if name[:2] in ("B-", "I-")})
        return NerData([list(row) for row in dataset[tokens_column]], tags, tuple(types), source, version)
    text_column, label_column = _require_columns(dataset, source, ("text",), ("label", "labels"))
    texts = [str(text) for text in dataset[text_column]]
    if kind == "multilabel":
        rows = np.array(dataset[label_column], dtype=bool)
        if rows.ndim != 2 or rows.shape[1] != len(TOPIC_LABELS):
            raise DatasetError(
                f"{source}: column {label_column!r} must hold a 0/1 list of the {len(TOPIC_LABELS)} "
                f"TweetTopic labels per row, got shape {rows.shape}"
            )
        return MultiLabelData(texts, rows, TOPIC_LABELS, source, version)
    names = _class_names(dataset, label_column, source)
    if label_keys and len(label_keys) != len(names):
        raise DatasetError(
            f"{source}: has {len(names)} classes {names}, but the task has {len(label_keys)} {list(label_keys)}"
        )
    return ClassificationData(
        texts, np.array(dataset[label_column], dtype=np.int64), tuple(label_keys or names), source, version
    )
