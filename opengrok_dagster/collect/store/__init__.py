"""The durable response store: every teacher response, or its final error, committed the moment it arrives.

SQLite rather than DuckDB: it ships with Python, commits one small transaction per response cheaply, and in
WAL mode lets several processes (parallel topic partitions, the review CLI, the UI) read and write the same
file; DuckDB allows one writing process at a time. A success is never overwritten, so nothing paid for is
lost or re-bought; an error row is replaced when a later run gets a response.
"""

from __future__ import annotations

from pathlib import Path

from opengrok_dagster.collect.store import batches, claims, ledger, rates, responses
from opengrok_dagster.collect.store.batches import Batches
from opengrok_dagster.collect.store.claims import Claim, Claims
from opengrok_dagster.collect.store.connection import StoreConnection
from opengrok_dagster.collect.store.ledger import SpendLedger
from opengrok_dagster.collect.store.rates import RateWindows
from opengrok_dagster.collect.store.responses import SPEND_GROUPS, STORED_COLUMNS, ResponseKey, Responses


__all__ = ["SPEND_GROUPS", "STORED_COLUMNS", "Claim", "ResponseKey", "ResponseStore"]


class ResponseStore:
    """The store's five tables behind one connection owner: ``responses`` (what was paid for), ``claims`` (who
    is sending what), ``rates`` (shared rate windows), ``spend`` (the budget ledger) and ``batches``."""

    def __init__(self, path: str | Path) -> None:
        self.connection = StoreConnection(path)
        self.path = self.connection.path
        # One write transaction: processes opening a new or older store at once would otherwise both see a table or
        # column missing and both add it ("duplicate column name").
        with self.connection.immediate() as connection:
            for table in (responses, claims, rates, ledger, batches):
                table.create(connection)
        self.responses = Responses(self.connection)
        self.claims = Claims(self.connection)
        self.rates = RateWindows(self.connection)
        self.spend = SpendLedger(self.connection)
        self.batches = Batches(self.connection)

    def close(self) -> None:
        """Close every thread's connection (worker threads commit responses, see the collector)."""
        self.connection.close()
