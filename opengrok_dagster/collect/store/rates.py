"""The ``rate_events`` table: requests and tokens admitted per rate-limit scope, shared by every process."""

from __future__ import annotations

import sqlite3
import time

from opengrok_dagster.collect.store.connection import StoreConnection


# Requests and tokens admitted per rate-limit scope (one teacher account), shared by every process.
_RATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_events (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    at REAL NOT NULL,
    tokens REAL NOT NULL
)
"""


def create(connection: sqlite3.Connection) -> None:
    """Create the table (and its indexes) if the file lacks it: called inside the store's opening transaction."""
    connection.execute(_RATE_SCHEMA)
    connection.execute("CREATE INDEX IF NOT EXISTS rate_events_scope_at ON rate_events (scope, at)")


class RateWindows:
    """Sliding request and token windows of each scope (one teacher account)."""

    def __init__(self, store: StoreConnection) -> None:
        self._store = store

    def admit(
        self, scope: str, window_s: float, requests: float | None, tokens: float | None, amount: float
    ) -> tuple[int | None, float]:
        """Admit one request of ``amount`` tokens under at most ``requests`` requests and ``tokens`` tokens per
        ``window_s`` in ``scope``, across processes: returns (event id, 0) when admitted, else (None, seconds
        until it may be). A request larger than the whole token limit is admitted into an empty window."""
        now = time.time()
        with self._store.immediate() as connection:
            # Kept for ten windows (a record of what was admitted), counted for one.
            connection.execute("DELETE FROM rate_events WHERE scope=? AND at<=?", (scope, now - 10 * window_s))
            events = connection.execute(
                "SELECT at, tokens FROM rate_events WHERE scope=? AND at>? ORDER BY at", (scope, now - window_s)
            ).fetchall()
            waits = []
            if requests is not None and len(events) + 1 > requests:
                waits.append(events[len(events) - int(requests)]["at"] + window_s - now)
            if tokens is not None and events:
                excess = sum(e["tokens"] for e in events) + min(amount, tokens) - tokens
                for event in events:  # the window frees tokens as its oldest events age out
                    if excess <= 1e-9:
                        break
                    excess -= event["tokens"]
                    waits.append(event["at"] + window_s - now)
            if waits:
                return None, max(0.001, max(waits))
            cursor = connection.execute(
                "INSERT INTO rate_events (scope, at, tokens) VALUES (?, ?, ?)", (scope, now, amount)
            )
            return cursor.lastrowid, 0.0

    def settle(self, event_id: int, tokens: float) -> None:
        """Replace an admitted request's estimated tokens with what the server reported."""
        with self._store.immediate() as connection:
            connection.execute("UPDATE rate_events SET tokens=? WHERE id=?", (tokens, event_id))
