"""The durable response store: every teacher response, or its final error, committed the moment it arrives.

SQLite rather than DuckDB: it ships with Python, commits one small transaction per response cheaply, and in
WAL mode lets several processes (parallel topic partitions, the review CLI, the UI) read and write the same
file; DuckDB allows one writing process at a time. A success is never overwritten, so nothing paid for is
lost or re-bought; an error row is replaced when a later run gets a response.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from opengrok_dagster.collect.client import TeacherResult

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
    response_format TEXT,
    PRIMARY KEY (prompt_id, teacher_model, sampling_key, round)
)
"""
STORED_COLUMNS = (
    "prompt_id", "teacher_model", "sampling_key", "round", "topic", "text", "finish_reason", "model",
    "prompt_tokens", "completion_tokens", "cost_usd", "latency_s", "attempts", "request_id", "error",
    "status_code", "collected_at", "response_format",
)


@dataclass(frozen=True)
class ResponseKey:
    """What identifies one paid-for response: the prompt, who answered, how it was sampled, and when (round)."""

    teacher_model: str
    sampling_key: str
    round: str


class ResponseStore:
    """One SQLite file; safe to share between threads of one process and between processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []  # one per thread that touched the store
        self._connections_lock = threading.Lock()
        with self._connection() as connection:
            connection.execute(_SCHEMA)
            columns = {row["name"] for row in connection.execute("PRAGMA table_info(responses)")}
            if "response_format" not in columns:  # a store written before annotation prompts existed
                connection.execute("ALTER TABLE responses ADD COLUMN response_format TEXT")

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # a committed response survives power loss too
            connection.row_factory = sqlite3.Row
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def answered_prompt_ids(self, key: ResponseKey, prompt_ids: Iterable[str]) -> set[str]:
        """The prompts that already have a successful response under ``key``: never request them again."""
        wanted = list(prompt_ids)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._connection().execute(
                f"SELECT prompt_id FROM responses WHERE teacher_model=? AND sampling_key=? AND round=? "
                f"AND error IS NULL AND prompt_id IN ({','.join('?' * len(chunk))})",
                (key.teacher_model, key.sampling_key, key.round, *chunk),
            )
            found.update(row["prompt_id"] for row in rows)
        return found

    def record(self, key: ResponseKey, prompt_id: str, topic: str, result: TeacherResult) -> None:
        """Commit one outcome now. An existing success is kept; an existing error is replaced."""
        values = {
            "prompt_id": prompt_id,
            **asdict(key),
            "topic": topic,
            "collected_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            **{name: getattr(result, name) for name in STORED_COLUMNS if hasattr(result, name)},
        }
        columns = ", ".join(STORED_COLUMNS)
        placeholders = ", ".join(f":{name}" for name in STORED_COLUMNS)
        updates = ", ".join(f"{name}=excluded.{name}" for name in STORED_COLUMNS[5:])
        with self._connection() as connection:  # commits on exit
            connection.execute(
                f"INSERT INTO responses ({columns}) VALUES ({placeholders}) "
                f"ON CONFLICT (prompt_id, teacher_model, sampling_key, round) DO UPDATE SET {updates} "
                f"WHERE responses.error IS NOT NULL",
                values,
            )

    def fetch(self, key: ResponseKey, prompt_ids: Iterable[str]) -> list[dict]:
        wanted = list(prompt_ids)
        rows: list[dict] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            cursor = self._connection().execute(
                f"SELECT {', '.join(STORED_COLUMNS)} FROM responses WHERE teacher_model=? AND sampling_key=? "
                f"AND round=? AND prompt_id IN ({','.join('?' * len(chunk))})",
                (key.teacher_model, key.sampling_key, key.round, *chunk),
            )
            rows.extend(dict(row) for row in cursor)
        return rows

    def close(self) -> None:
        """Close every thread's connection (worker threads commit responses, see the collector)."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
