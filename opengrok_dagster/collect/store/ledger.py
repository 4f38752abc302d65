"""The ``spend`` table: each admitted request's worst case reserved before sending, its real cost once answered."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from opengrok_dagster.collect.store.connection import StoreConnection


# One row per admitted request: its worst case reserved before sending, its real cost once answered.
_SPEND_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY,
    day TEXT NOT NULL,
    run_id TEXT NOT NULL,
    partition TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    reserved_usd REAL NOT NULL,
    actual_usd REAL,
    reserved_at TEXT NOT NULL
)
"""


def create(connection: sqlite3.Connection) -> None:
    """Create the table (and its indexes) if the file lacks it: called inside the store's opening transaction."""
    connection.execute(_SPEND_SCHEMA)
    connection.execute("CREATE INDEX IF NOT EXISTS spend_day ON spend (day)")
    connection.execute("CREATE INDEX IF NOT EXISTS spend_run ON spend (run_id)")


class SpendLedger:
    """Budget reservations and settled costs, per day, run and partition."""

    def __init__(self, store: StoreConnection) -> None:
        self._store = store

    def reserve(
        self,
        day: str,
        run_id: str,
        partition: str,
        prompt_id: str,
        worst_usd: float,
        run_budget: float | None,
        daily_budget: float | None,
    ) -> int | None:
        """Reserve ``worst_usd`` if it fits both budgets (what is spent counts settled costs and open
        reservations); returns the reservation's id, or None when it does not fit. One transaction."""
        with self._store.immediate() as connection:
            for budget, column, value in ((run_budget, "run_id", run_id), (daily_budget, "day", day)):
                if budget is not None and _spent(connection, {column: value}) + worst_usd > budget + 1e-12:
                    return None
            cursor = connection.execute(
                "INSERT INTO spend (day, run_id, partition, prompt_id, reserved_usd, reserved_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    day,
                    run_id,
                    partition,
                    prompt_id,
                    worst_usd,
                    datetime.now(UTC).isoformat(timespec="milliseconds"),
                ),
            )
            return cursor.lastrowid

    def settle(self, reservation: int, actual_usd: float) -> None:
        with self._store.immediate() as connection:
            connection.execute("UPDATE spend SET actual_usd=? WHERE id=?", (actual_usd, reservation))

    def spent(self, *, day: str | None = None, run_id: str | None = None, partition: str | None = None) -> float:
        """USD spent (settled, plus open reservations at their worst case) in a day, run and/or partition."""
        filters = {"day": day, "run_id": run_id, "partition": partition}
        return _spent(self._store.read(), {column: value for column, value in filters.items() if value is not None})

    def unsettled(self) -> tuple[int, float]:
        """(count, USD at their worst case) of budget reservations never settled: requests of a run killed while
        they were in flight, which the provider may have billed."""
        row = (
            self._store.read()
            .execute("SELECT COUNT(*), COALESCE(SUM(reserved_usd), 0.0) FROM spend WHERE actual_usd IS NULL")
            .fetchone()
        )
        return int(row[0]), float(row[1])


def _spent(connection: sqlite3.Connection, filters: dict[str, str]) -> float:
    """Settled costs plus open reservations at their worst case, of the spend rows matching ``filters``."""
    where = " AND ".join(f"{column}=?" for column in filters) or "1"
    row = connection.execute(
        f"SELECT COALESCE(SUM(COALESCE(actual_usd, reserved_usd)), 0) FROM spend WHERE {where}", list(filters.values())
    ).fetchone()
    return float(row[0])
