"""The ``batches`` table: one row per batch submission, written before anything is uploaded."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from opengrok_dagster.collect.store.connection import StoreConnection
from opengrok_dagster.collect.store.responses import ResponseKey


# One row per batch submission: written before anything is uploaded, so a killed run finds its batch again
# (by batch_id, or by the submission token in the batch's metadata when it died before recording the id).
_BATCHES_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    submission TEXT PRIMARY KEY,
    teacher_model TEXT NOT NULL,
    sampling_key TEXT NOT NULL,
    round TEXT NOT NULL,
    topic TEXT NOT NULL,
    batch_id TEXT,
    state TEXT NOT NULL,
    prompts TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


def create(connection: sqlite3.Connection) -> None:
    """Create the table (and its indexes) if the file lacks it: called inside the store's opening transaction."""
    connection.execute(_BATCHES_SCHEMA)


class Batches:
    """Batch submissions and their states, so a killed run finds its batch again."""

    def __init__(self, store: StoreConnection) -> None:
        self._store = store

    def open(self, key: ResponseKey, topic: str) -> dict | None:
        """The unfinished batch submission of this key and topic, if any: ``prompts`` maps each prompt id
        in it to its budget reservation (or None)."""
        row = (
            self._store.read()
            .execute(
                "SELECT * FROM batches WHERE teacher_model=? AND sampling_key=? AND round=? AND topic=? AND state NOT IN ('done', 'abandoned') "
                "ORDER BY created_at LIMIT 1",
                (key.teacher_model, key.sampling_key, key.round, topic),
            )
            .fetchone()
        )
        return dict(row, prompts=json.loads(row["prompts"])) if row else None

    def add(self, submission: str, key: ResponseKey, topic: str, prompts: dict[str, int | None]) -> None:
        with self._store.immediate() as connection:
            connection.execute(
                "INSERT INTO batches (submission, teacher_model, sampling_key, round, topic, state, prompts, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'submitting', ?, ?)",
                (
                    submission,
                    key.teacher_model,
                    key.sampling_key,
                    key.round,
                    topic,
                    json.dumps(prompts),
                    datetime.now(UTC).isoformat(timespec="milliseconds"),
                ),
            )

    def set_state(self, submission: str, state: str, batch_id: str | None = None) -> None:
        with self._store.immediate() as connection:
            connection.execute(
                "UPDATE batches SET state=?, batch_id=COALESCE(?, batch_id) WHERE submission=?",
                (state, batch_id, submission),
            )
