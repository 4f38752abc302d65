"""The ``claims`` table: a run claims a prompt before sending it, so each prompt is sent once across processes."""

from __future__ import annotations

import sqlite3
import time
from enum import Enum

from opengrok_dagster.collect.store.connection import StoreConnection
from opengrok_dagster.collect.store.responses import ResponseKey


# A run claims a prompt here before sending it (exactly once across processes); the owner renews its claims
# while it runs, so a killed run's claims lapse at expires_at and another run may take the prompt.
_CLAIMS_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    prompt_id TEXT NOT NULL,
    teacher_model TEXT NOT NULL,
    sampling_key TEXT NOT NULL,
    round TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (prompt_id, teacher_model, sampling_key, round)
)
"""


class Claim(Enum):
    """What :meth:`Claims.claim` found: the prompt is now ours to send, already answered, or being
    sent by another live run."""

    MINE = "mine"
    ANSWERED = "answered"
    HELD = "held"


def create(connection: sqlite3.Connection) -> None:
    """Create the table (and its indexes) if the file lacks it: called inside the store's opening transaction."""
    connection.execute(_CLAIMS_SCHEMA)


class Claims:
    """Who is sending which prompt now; a claim lapses when its owner stops renewing it."""

    def __init__(self, store: StoreConnection) -> None:
        self._store = store

    def claim(self, key: ResponseKey, prompt_id: str, owner: str, lease_s: float) -> Claim:
        """Claim ``prompt_id`` for ``owner`` until ``lease_s`` from now, unless it is answered or claimed by
        another owner whose lease has not lapsed; checked and taken in one transaction."""
        ident = (prompt_id, key.teacher_model, key.sampling_key, key.round)
        where = "prompt_id=? AND teacher_model=? AND sampling_key=? AND round=?"
        now = time.time()
        with self._store.immediate() as connection:
            if connection.execute(f"SELECT 1 FROM responses WHERE {where} AND error IS NULL", ident).fetchone():
                return Claim.ANSWERED
            held = connection.execute(f"SELECT owner, expires_at FROM claims WHERE {where}", ident).fetchone()
            if held and held["owner"] != owner and held["expires_at"] > now:
                return Claim.HELD
            connection.execute(
                "INSERT INTO claims (prompt_id, teacher_model, sampling_key, round, owner, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (prompt_id, teacher_model, sampling_key, round) "
                "DO UPDATE SET owner=excluded.owner, expires_at=excluded.expires_at",
                (*ident, owner, now + lease_s),
            )
            return Claim.MINE

    def renew(self, owner: str, lease_s: float) -> None:
        """Extend every claim of ``owner`` (a running collection's heartbeat)."""
        with self._store.immediate() as connection:
            connection.execute("UPDATE claims SET expires_at=? WHERE owner=?", (time.time() + lease_s, owner))

    def release(self, key: ResponseKey, prompt_id: str, owner: str) -> None:
        """Give up one claim without an answer (the budget refused the request): the prompt stays missing."""
        with self._store.immediate() as connection:
            connection.execute(
                "DELETE FROM claims WHERE prompt_id=? AND teacher_model=? AND sampling_key=? AND round=? AND owner=?",
                (prompt_id, key.teacher_model, key.sampling_key, key.round, owner),
            )

    def release_all(self, owner: str) -> None:
        """Give up every claim of ``owner`` still open (prompts it did not send stay missing for the next run)."""
        with self._store.immediate() as connection:
            connection.execute("DELETE FROM claims WHERE owner=?", (owner,))
