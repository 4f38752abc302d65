"""Reading the user's posts: one shard per catalogue entry (a path, a glob or a hub split), unlabelled.

A shard is a partition of the ``posts`` asset, so adding one is a backfill of that key alone. Paths are
absolute, relative to the catalogue file, or ``data:<path>`` under the data directory (where the offline
default reads the *texts* of the shared train splits; no label column is ever read).
"""

from __future__ import annotations

import codecs
import csv
import glob
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from opengrok_dagster.tasks.datasets import read_conll, read_semeval_tsv, resolve_data_dir
from opengrok_dagster.tasks.hub import INSTALL, HubSplit, is_hub_split
from opengrok_dagster.tasks.keys import TopicKeyError, validate_topic_key
from opengrok_dagster.tasks.schemas import POST_COLUMNS


DATA_PREFIX = "data:"
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".tsv": "semeval_tsv"}


class PostsError(ValueError):
    """A posts shard cannot be read; the message names the shard, the file and the fix."""


class PostShard(BaseModel):
    """Where one shard's posts are and which columns hold what."""

    key: str = Field(description="Partition key of the shard (lowercase letters, digits, '-', '_').")
    path: str = Field(
        description="File, glob, 'data:<path under the data directory>' or 'hf:<dataset>:<config>:<split>'."
    )
    format: Literal["auto", "jsonl", "csv", "parquet", "semeval_tsv", "conll"] = Field(
        default="auto", description="File format; auto goes by the suffix (.jsonl, .csv, .parquet, .tsv = SemEval)."
    )
    text_column: str = Field(default="text", description="Column with the post's text.")
    id_column: str | None = Field(
        default="id", description="Column with a post id, when present; else the text's hash."
    )
    topic_column: str = Field(default="topic", description="Column with the post's topic, when present.")
    platform_column: str = Field(default="platform", description="Column with the platform, when present.")
    created_at_column: str = Field(default="created_at", description="Column with the creation time, when present.")
    topic: str | None = Field(default=None, description="Topic of every post of the shard (when no topic column).")
    platform: str | None = Field(default=None, description="Platform of every post of the shard (when no column).")
    encoding: str = Field(
        default="utf-8",
        description="Text encoding of the shard's JSONL/CSV files, e.g. cp1252 or latin-1 for a spreadsheet export "
        "(a UTF-8 byte-order mark is skipped).",
    )
    on_bad_line: Literal["stop", "skip"] = Field(
        default="stop",
        description="A line that is not a post (invalid JSON, a CSV row with too many fields): 'stop' fails the "
        "shard naming the line; 'skip' leaves it out, counted in the posts asset's metadata (bad_lines_skipped).",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                f"unknown encoding {value!r}; use a Python codec name such as utf-8, cp1252, latin-1"
            ) from None
        return value


@dataclass(frozen=True)
class SkippedLine:
    """A line ``on_bad_line: skip`` left out: the file, its line number (None where the reader cannot tell) and why."""

    source: str
    line: int | None
    reason: str


def load_posts_catalogue(path: str | Path) -> list[PostShard]:
    path = Path(path)
    if not path.is_file():
        raise PostsError(
            f"posts catalogue {path} does not exist; point posts_catalogue at a YAML file like opengrok_dagster/config/posts.yaml"
        )
    try:
        entries = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("shards")
    except (yaml.YAMLError, AttributeError) as exc:
        raise PostsError(f"posts catalogue {path} is not a YAML mapping with a 'shards:' list ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise PostsError(f"posts catalogue {path} needs a non-empty 'shards:' list of {{key, path}} entries")
    shards, seen = [], set()
    for index, entry in enumerate(entries):
        try:
            shard = PostShard.model_validate(entry)
            validate_topic_key(shard.key)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise PostsError(
                f"posts catalogue {path}: entry {index}: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            ) from None
        except TopicKeyError as exc:
            raise PostsError(
                f"posts catalogue {path}: entry {index}: shard {str(exc).replace('topic key', 'key')}"
            ) from None
        if shard.key in seen:
            raise PostsError(f"posts catalogue {path}: shard key {shard.key!r} appears twice")
        seen.add(shard.key)
        shards.append(shard)
    return shards


def find_shard(shards: list[PostShard], key: str) -> PostShard:
    for shard in shards:
        if shard.key == key:
            return shard
    raise PostsError(
        f"posts shard {key!r} is not in the posts catalogue ({', '.join(s.key for s in shards)}); add it there"
    )


def _files(shard: PostShard, catalogue_dir: Path, data_dir: str | None) -> list[Path]:
    pattern = shard.path
    if pattern.startswith(DATA_PREFIX):
        root = resolve_data_dir(data_dir)
        if root is None:
            raise PostsError(
                f"posts shard {shard.key}: {pattern} is under the data directory, but none was found; "
                "set OPENGROK_DATA_DIR (or data_dir)"
            )
        pattern = str(root / pattern.removeprefix(DATA_PREFIX))
    elif not Path(pattern).expanduser().is_absolute():
        pattern = str(catalogue_dir / pattern)
    files = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser()), recursive=True) if Path(p).is_file())
    if not files:
        raise PostsError(
            f"posts shard {shard.key}: no file matches {pattern}; fix the shard's path in the posts catalogue"
        )
    return files


def _decoded(shard: PostShard, path: Path) -> str:
    """The file's text in the shard's encoding; a byte it cannot decode is named with its offset and the fix."""
    data = path.read_bytes()
    try:
        text = data.decode(shard.encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        suggestion = next(e for e in ("utf-8", "cp1252", "latin-1") if e != shard.encoding and _decodes(data, e))
        raise PostsError(
            f"posts shard {shard.key}: {path} is not {shard.encoding}: byte 0x{data[exc.start]:02x} at byte offset "
            f"{exc.start} (line {line}) cannot be decoded; set `encoding: {suggestion}` (or the file's real encoding) "
            "for this shard in the posts catalogue"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark (Excel's 'UTF-8 CSV') is no text


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _jsonl_rows(shard: PostShard, path: Path, skipped: list[SkippedLine]) -> list[dict]:
    """One JSON object a line; a line that is none stops the shard (naming the line) or is skipped and counted."""
    rows = []
    for number, line in enumerate(_decoded(shard, path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            reason = str(exc)[:120]
            if shard.on_bad_line == "stop":
                raise PostsError(
                    f"posts shard {shard.key}: {path} line {number} is not a JSON object ({reason}); fix the line, or "
                    "set `on_bad_line: skip` for this shard in the posts catalogue to leave such lines out"
                ) from None
            skipped.append(SkippedLine(str(path), number, reason))
            continue
        rows.append(row)
    return rows


def _csv_frame(shard: PostShard, path: Path, skipped: list[SkippedLine]) -> pd.DataFrame:
    """A CSV file as strings; a row with more fields than the header stops the shard or is skipped and counted."""
    text = _decoded(shard, path)
    if shard.on_bad_line == "stop":
        try:
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, csv.Error) as exc:  # pandas names the line: "Expected 2 fields in line 3"
            raise PostsError(
                f"posts shard {shard.key}: {path}: {str(exc).strip()[:200]}; fix the row, or set "
                "`on_bad_line: skip` for this shard in the posts catalogue to leave such rows out"
            ) from None

    def skip(fields: list[str]) -> None:  # the python engine does not say which line
        skipped.append(SkippedLine(str(path), None, f"a row of {len(fields)} fields"))

    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, engine="python", on_bad_lines=skip)


def _read_file(shard: PostShard, path: Path, skipped: list[SkippedLine]) -> pd.DataFrame:
    kind = shard.format if shard.format != "auto" else SUFFIX_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise PostsError(
            f"posts shard {shard.key}: cannot tell the format of {path} from its suffix; set format "
            f"({', '.join(sorted(set(SUFFIX_FORMATS.values()) | {'conll'}))})"
        )
    try:
        if kind == "jsonl":
            return pd.DataFrame(_jsonl_rows(shard, path, skipped))
        if kind == "csv":
            return _csv_frame(shard, path, skipped)
        if kind == "parquet":
            return pd.read_parquet(path)
        if kind == "semeval_tsv":  # the dataset readers decode the files' quirks; only the texts are kept
            return pd.DataFrame({"text": read_semeval_tsv(path).texts})
        return pd.DataFrame({"text": [" ".join(tokens) for tokens in read_conll(path).tokens]})
    except PostsError:  # already names the shard, the file and the fix
        raise
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise PostsError(f"posts shard {shard.key}: cannot read {path} as {kind} ({str(exc)[:200]})") from None


def _read_hub(shard: PostShard) -> tuple[pd.DataFrame, str]:
    split = HubSplit.parse(shard.path)
    try:
        import datasets
    except ImportError:
        raise PostsError(f"posts shard {shard.key}: {split} needs the datasets package; {INSTALL}") from None
    try:
        dataset = datasets.load_dataset(split.dataset, split.config, split=split.split)
    except Exception as exc:  # offline, unknown dataset/config/split, gated repo: all say the same to the user
        raise PostsError(
            f"posts shard {shard.key}: {split} could not be loaded from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc)[:200]}); check its name, the network or HF_HUB_OFFLINE"
        ) from None
    wanted = [
        c
        for c in (
            shard.text_column,
            shard.id_column,
            shard.topic_column,
            shard.platform_column,
            shard.created_at_column,
        )
        if c and c in dataset.column_names
    ]
    return dataset.select_columns(wanted).to_pandas(), str(split)


def read_shard(
    shard: PostShard, catalogue_dir: Path, data_dir: str | None = None, skipped: list[SkippedLine] | None = None
) -> pd.DataFrame:
    """The shard's posts in ``POST_COLUMNS``; blank texts and repeated texts are dropped (first kept). Lines
    ``on_bad_line: skip`` leaves out are appended to ``skipped``."""
    skipped = [] if skipped is None else skipped
    if is_hub_split(shard.path):
        frames = [_read_hub(shard)]
    else:
        frames = [(_read_file(shard, path, skipped), str(path)) for path in _files(shard, catalogue_dir, data_dir)]
    parts = [pd.DataFrame(columns=list(POST_COLUMNS))]
    for frame, source in frames:
        if frame.empty:
            continue
        if shard.text_column not in frame.columns:
            raise PostsError(
                f"posts shard {shard.key}: {source} has columns {list(frame.columns)[:12]} but no text column "
                f"{shard.text_column!r}; set text_column in the posts catalogue"
            )
        part = pd.DataFrame({"text": frame[shard.text_column].fillna("").astype(str).str.strip()})
        ids = frame[shard.id_column].astype(str) if shard.id_column and shard.id_column in frame.columns else None
        part["post_id"] = (
            ids if ids is not None else [hashlib.sha256(t.encode()).hexdigest()[:16] for t in part["text"]]
        )
        for column, configured, constant in (
            ("topic", shard.topic_column, shard.topic),
            ("platform", shard.platform_column, shard.platform),
            ("created_at", shard.created_at_column, None),
        ):
            values = frame[configured] if configured in frame.columns else pd.Series([constant] * len(frame))
            part[column] = [None if pd.isna(v) else str(v) for v in values]
        part["source"] = source
        parts.append(part)
    posts = pd.concat(parts, ignore_index=True)
    posts = posts[posts["text"] != ""].drop_duplicates("text")
    if posts.empty:
        raise PostsError(
            f"posts shard {shard.key}: {', '.join(s for _, s in frames)[:300]} hold no posts with text; "
            "check the files or the text_column"
        )
    posts["post_id"] = shard.key + ":" + posts["post_id"]
    posts["shard"] = shard.key
    return posts.drop_duplicates("post_id").reset_index(drop=True)[list(POST_COLUMNS)]
