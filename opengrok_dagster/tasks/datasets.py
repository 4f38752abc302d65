"""Readers for the social-media datasets as they are laid out in ``shared/data`` (see each folder's SOURCE.md).

Every reader takes a path, so any split (including the withheld test splits) is read by the same code; each
error names the file and line and says what was expected. The same tasks load from the Hugging Face hub
through :mod:`opengrok_dagster.tasks.hub` into the same records.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opengrok_dagster.tasks.formats import SENTIMENT_LABELS, TOPIC_LABELS


DATA_DIR_VARIABLE = "OPENGROK_DATA_DIR"
# ``shared/data`` beside the repository checkout, where the project keeps its copies of the public datasets.
SHARED_DATA_FALLBACK = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class DatasetError(ValueError):
    """A data file is missing or not in the format its reader expects."""


@dataclass(frozen=True)
class ClassificationData:
    texts: list[str]
    labels: np.ndarray  # int class index per text
    label_names: tuple[str, ...]
    source: str
    version: str = ""  # the data version the report records: a file digest, or the hub dataset's fingerprint


@dataclass(frozen=True)
class MultiLabelData:
    texts: list[str]
    labels: np.ndarray  # bool (n, len(label_names))
    label_names: tuple[str, ...]
    source: str
    version: str = ""


@dataclass(frozen=True)
class NerData:
    tokens: list[list[str]]
    tags: list[list[str]]
    entity_types: tuple[str, ...]
    source: str
    version: str = ""


def resolve_data_dir(configured: str | None = None) -> Path | None:
    """Configured path, else ``$OPENGROK_DATA_DIR``, else ``../shared/data`` beside the repository; None if none exists.

    A directory that is named explicitly but does not exist is an error, not a silent skip.
    """
    named = configured or os.environ.get(DATA_DIR_VARIABLE)
    if named:
        path = Path(named).expanduser()
        if not path.is_dir():
            source = "the data_dir setting" if configured else f"${DATA_DIR_VARIABLE}"
            raise DatasetError(f"data directory {path} (from {source}) does not exist; fix the path or unset it")
        return path
    return SHARED_DATA_FALLBACK if SHARED_DATA_FALLBACK.is_dir() else None


def file_digest(*paths: Path) -> str:
    """Short sha256 of one or more data files, in order: the data version the report records."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


def _lines(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist; check the data directory and the task's split path")
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"data file {path} is not UTF-8 text ({exc}); it must be the file as published") from None


def _drop_final_empty(lines: list[str]) -> list[str]:
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_tweeteval(prefix: Path) -> ClassificationData:
    """``<prefix>_text.txt`` + ``<prefix>_labels.txt`` with ``mapping.txt`` beside them (e.g. ``tweeteval/sentiment/val``)."""
    prefix = Path(prefix)
    text_path, labels_path = Path(f"{prefix}_text.txt"), Path(f"{prefix}_labels.txt")
    mapping_path = prefix.parent / "mapping.txt"
    if not mapping_path.is_file() and (prefix.parent.parent / "mapping.txt").is_file():
        mapping_path = prefix.parent.parent / "mapping.txt"  # stance: one mapping for all targets
    names: dict[int, str] = {}
    for number, line in enumerate(_drop_final_empty(_lines(mapping_path)), 1):
        index, sep, name = line.partition("\t")
        if not sep or not index.strip().isdigit():
            raise DatasetError(f"{mapping_path}:{number}: expected 'id<TAB>name', got {line!r}")
        names[int(index)] = name.strip()
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{mapping_path}: label ids must be 0..{len(names) - 1}, got {sorted(names)}")
    texts = _drop_final_empty(_lines(text_path))
    raw_labels = _drop_final_empty(_lines(labels_path))
    if len(texts) != len(raw_labels):
        raise DatasetError(
            f"{text_path} has {len(texts)} lines but {labels_path} has {len(raw_labels)}: each text needs exactly one label line"
        )
    labels = []
    for number, value in enumerate(raw_labels, 1):
        if not value.strip().isdigit() or int(value) not in names:
            raise DatasetError(
                f"{labels_path}:{number}: label {value!r} is not an id in {mapping_path} ({sorted(names)})"
            )
        labels.append(int(value))
    return ClassificationData(
        texts, np.array(labels, dtype=np.int64), tuple(names[i] for i in range(len(names))), str(text_path)
    )


_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def read_semeval_tsv(paths: list[Path] | Path) -> ClassificationData:
    """SemEval 2013-2017 Subtask A: ``id<TAB>label<TAB>text[<TAB>]``; literal ``\\uXXXX`` escapes are decoded."""
    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    texts, labels = [], []
    for path in paths:
        for number, line in enumerate(_drop_final_empty(_lines(path)), 1):
            fields = line.split("\t")
            if len(fields) < 3:
                raise DatasetError(f"{path}:{number}: expected 'id<TAB>label<TAB>text', got {len(fields)} field(s)")
            label = fields[1].strip()
            if label not in SENTIMENT_LABELS:
                raise DatasetError(f"{path}:{number}: label {label!r} is not one of {', '.join(SENTIMENT_LABELS)}")
            texts.append(_JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), fields[2]))
            labels.append(SENTIMENT_LABELS.index(label))
    return ClassificationData(texts, np.array(labels, dtype=np.int64), SENTIMENT_LABELS, ", ".join(map(str, paths)))


def read_topic_jsonl(path: Path) -> MultiLabelData:
    """TweetTopicXL JSONL: ``text`` plus one 0/1 field per topic (ints, or floats in the ``es`` files)."""
    path = Path(path)
    texts, rows = [], []
    for number, line in enumerate(_drop_final_empty(_lines(path)), 1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: not a JSON object ({exc})") from None
        missing = [name for name in ("text", *TOPIC_LABELS) if name not in record]
        if missing:
            raise DatasetError(
                f"{path}:{number}: record lacks {', '.join(missing[:4])}; expected TweetTopic's 19 label fields"
            )
        values = [record[name] for name in TOPIC_LABELS]
        if any(v not in (0, 1) for v in values):
            raise DatasetError(f"{path}:{number}: topic fields must be 0 or 1, got {sorted(set(map(str, values)))}")
        texts.append(str(record["text"]))
        rows.append([bool(v) for v in values])
    return MultiLabelData(
        texts, np.array(rows, dtype=bool).reshape(len(rows), len(TOPIC_LABELS)), TOPIC_LABELS, str(path)
    )


def read_conll(path: Path) -> NerData:
    """CoNLL NER: token first, BIO tag last, TAB-separated; blank (or whitespace-only) lines end a sentence.

    ``-DOCSTART-`` lines are skipped, and so is a token that is empty and tagged ``O`` (the btc.test quirk).
    """
    path = Path(path)
    sentences, tag_rows, tokens, tags = [], [], [], []
    types: set[str] = set()
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            if tokens:
                sentences.append(tokens)
                tag_rows.append(tags)
            tokens, tags = [], []
            continue
        if line.startswith("-DOCSTART-"):
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetError(f"{path}:{number}: expected 'token<TAB>...<TAB>tag', got {line!r}")
        token, tag = fields[0].strip(), fields[-1].strip()
        if tag != "O" and not re.fullmatch(r"[BI]-\S+", tag):
            raise DatasetError(f"{path}:{number}: tag {tag!r} is not BIO (O, B-TYPE or I-TYPE)")
        if not token:
            if tag == "O":
                continue
            raise DatasetError(f"{path}:{number}: empty token tagged {tag!r}")
        if tag != "O":
            types.add(tag[2:])
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append(tokens)
        tag_rows.append(tags)
    if not sentences:
        raise DatasetError(f"{path} holds no sentences; expected CoNLL 'token<TAB>tag' lines")
    return NerData(sentences, tag_rows, tuple(sorted(types)), str(path))
