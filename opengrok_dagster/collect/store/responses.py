"""The ``responses`` table: every teacher response, or its final error, committed the moment it arrives. A success
is never overwritten, so nothing paid for is lost or re-bought; an error row is replaced when a later run gets a
response."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from opengrok_dagster.collect.result import TeacherResult
from opengrok_dagster.collect.store.connection import StoreConnection
from opengrok_dagster.sqlite import select_in


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    prompt_id TEXT NOT NULL,
    teacher_model TEXT NOT NULL,
    sampling_key TEXT NOT NULL,
    round TEXT NOT NULL,
    topic TEXT NOT NULL,
    text TEXT,
    finish_reason TEXT,
    model TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL NOT NULL,
    latency_s REAL NOT NULL,
    attempts INTEGER NOT NULL,
    request_id TEXT,
    error TEXT,
    status_code INTEGER,
    collected_at TEXT NOT NULL,
    anomaly TEXT,
    logprobs TEXT,
    response_format TEXT,
    PRIMARY KEY (prompt_id, teacher_model, sampling_key, round)
)
"""
STORED_COLUMNS = (
    "prompt_id",
    "teacher_model",
    "sampling_key",
    "round",
    "topic",
    "text",
    "finish_reason",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "attempts",
    "request_id",
    "error",
    "status_code",
    "collected_at",
    "anomaly",
    "logprobs",
    "response_format",
)
# Who paid for a response, kept beside it for the spend report but not in raw_responses: the Dagster run
# that recorded it, and the batch that answered it (null: sent online, at the online price).
PROVENANCE_COLUMNS = ("run_id", "batch_id")
# Columns added after the first release, with their SQL type: a store written before gets them on open.
_ADDED_COLUMNS = {
    "anomaly": "TEXT",
    "logprobs": "TEXT",
    "response_format": "TEXT",
    "run_id": "TEXT",
    "batch_id": "TEXT",
}
# What spend is grouped by in :meth:`Responses.spend_by`; a partition reads as Dagster writes its key.
SPEND_GROUPS = {
    "teacher": "teacher_model",
    "partition": "round || '|' || topic",
    "run": "COALESCE(run_id, '')",
    "day": "substr(collected_at, 1, 10)",  # collected_at is UTC ISO 8601
}


@dataclass(frozen=True)
class ResponseKey:
    """What identifies one paid-for response: the prompt, who answered, how it was sampled, and when (round)."""

    teacher_model: str
    sampling_key: str
    round: str


def create(connection: sqlite3.Connection) -> None:
    """Create the table, or add the columns a store written by older code lacks (inside the opening transaction:
    processes opening an older store at once would otherwise both add a column)."""
    connection.execute(_SCHEMA)
    present = {row["name"] for row in connection.execute("PRAGMA table_info(responses)")}
    for name, sql_type in _ADDED_COLUMNS.items():
        if name not in present:
            connection.execute(f"ALTER TABLE responses ADD COLUMN {name} {sql_type}")


class Responses:
    """The stored outcomes, keyed by prompt and :class:`ResponseKey`."""

    def __init__(self, store: StoreConnection) -> None:
        self._store = store

    def record(
        self,
        key: ResponseKey,
        prompt_id: str,
        topic: str,
        result: TeacherResult,
        owner: str | None = None,
        *,
        run_id: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        """Commit one outcome now, releasing ``owner``'s claim on the prompt in the same transaction. An existing
        success is kept; an existing error is replaced. ``run_id`` (the run that paid) and ``batch_id`` (the batch
        that answered, at the batch price) feed the spend report."""
        values = {
            "prompt_id": prompt_id,
            **asdict(key),
            "topic": topic,
            "collected_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **{name: getattr(result, name) for name in STORED_COLUMNS if hasattr(result, name)},
            "run_id": run_id,
            "batch_id": batch_id,
        }
        written = STORED_COLUMNS + PROVENANCE_COLUMNS
        columns = ", ".join(written)
        placeholders = ", ".join(f":{name}" for name in written)
        updates = ", ".join(f"{name}=excluded.{name}" for name in written[5:])
        with self._store.immediate() as connection:
            connection.execute(
                f"INSERT INTO responses ({columns}) VALUES ({placeholders}) "
                f"ON CONFLICT (prompt_id, teacher_model, sampling_key, round) DO UPDATE SET {updates} "
                f"WHERE responses.error IS NOT NULL",
                values,
            )
            if owner is not None:
                connection.execute(
                    "DELETE FROM claims WHERE prompt_id=? AND teacher_model=? AND sampling_key=? AND round=? AND owner=?",
                    (prompt_id, key.teacher_model, key.sampling_key, key.round, owner),
                )

    def answered(self, key: ResponseKey, prompt_ids: Iterable[str]) -> set[str]:
        """The prompts that already have a successful response under ``key``: never request them again."""
        rows = select_in(
            self._store.read(),
            "SELECT prompt_id FROM responses WHERE teacher_model=? AND sampling_key=? AND round=? "
            "AND error IS NULL AND prompt_id IN ({marks})",
            (key.teacher_model, key.sampling_key, key.round),
            prompt_ids,
        )
        return {row["prompt_id"] for row in rows}

    def fetch(self, key: ResponseKey, prompt_ids: Iterable[str]) -> list[dict]:
        rows = select_in(
            self._store.read(),
            f"SELECT {', '.join(STORED_COLUMNS)} FROM responses WHERE teacher_model=? AND sampling_key=? "
            "AND round=? AND prompt_id IN ({marks})",
            (key.teacher_model, key.sampling_key, key.round),
            prompt_ids,
        )
        return [dict(row) for row in rows]

    def usage(self, prompt_ids: Iterable[str]) -> list[sqlite3.Row]:
        """Prompt and completion tokens and latency of the answered requests of ``prompt_ids``, any teacher or
        round: what the labelling cost comparison measures the teacher by."""
        return list(
            select_in(
                self._store.read(),
                "SELECT prompt_tokens, completion_tokens, latency_s FROM responses "
                "WHERE error IS NULL AND prompt_tokens IS NOT NULL AND prompt_id IN ({marks})",
                (),
                sorted(set(prompt_ids)),
            )
        )

    def completion_history(self, teacher_model: str, sampling_key: str) -> tuple[float | None, int]:
        """(mean completion tokens, count) of the successful answers of this teacher and sampling, any round."""
        row = (
            self._store.read()
            .execute(
                "SELECT AVG(completion_tokens) AS mean, COUNT(completion_tokens) AS n FROM responses "
                "WHERE teacher_model=? AND sampling_key=? AND error IS NULL AND completion_tokens IS NOT NULL",
                (teacher_model, sampling_key),
            )
            .fetchone()
        )
        return row["mean"], row["n"]

    def spend_by(self, group: str | None = None) -> list[dict]:
        """What the stored responses cost, in total or per ``group`` (a key of :data:`SPEND_GROUPS`): requests
        (one stored outcome per prompt), errors, prompt and completion tokens, USD, and the batch-priced share."""
        key = SPEND_GROUPS[group] if group else "'total'"
        rows = self._store.read().execute(
            f"SELECT {key} AS key, COUNT(*) AS requests, COALESCE(SUM(error IS NOT NULL), 0) AS errors, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
            "COALESCE(SUM(cost_usd), 0.0) AS usd, COALESCE(SUM(batch_id IS NOT NULL), 0) AS batch_requests, "
            "COALESCE(SUM(CASE WHEN batch_id IS NOT NULL THEN cost_usd END), 0.0) AS batch_usd "
            "FROM responses GROUP BY 1 ORDER BY 1"
        )
        return [dict(row) for row in rows]
