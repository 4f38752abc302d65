"""Answers API models gave to evaluation prompts, kept so that an unchanged rerun asks nothing again.

The evaluation asks with greedy decoding, so the same model, messages and token budget give the same
answer: an answer is paid for once. Only answers are kept, never failures, which are asked again. A remote
model can change behind the same id; the evaluation config can switch reuse off for such a run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opengrok_dagster.sqlite import select_in


def request_key(messages: list[dict[str, str]], max_tokens: int) -> str:
    """What the answer depends on besides the model: the messages and the token budget (greedy decoding)."""
    return hashlib.sha256(json.dumps([messages, max_tokens], sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
    """One SQLite file; ``model`` names the answering model (id and where it is served), not its endpoint's port."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._transaction() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS answers (model TEXT NOT NULL, request_key TEXT NOT NULL, answer TEXT NOT NULL, "
                "PRIMARY KEY (model, request_key))"
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            with connection:
                yield connection
        finally:
            connection.close()

    def get_many(self, model: str, keys: list[str]) -> dict[str, str]:
        with self._transaction() as connection:
            sql = "SELECT request_key, answer FROM answers WHERE model = ? AND request_key IN ({marks})"
            return dict(select_in(connection, sql, (model,), keys))

    def put_many(self, model: str, answers: dict[str, str]) -> None:
        with self._transaction() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO answers (model, request_key, answer) VALUES (?, ?, ?)",
                [(model, key, answer) for key, answer in answers.items()],
            )
