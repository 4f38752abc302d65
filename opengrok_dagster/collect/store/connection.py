"""The one owner of the response store's SQLite file: a connection per thread, WAL mode, and write transactions
taken at once (BEGIN IMMEDIATE), which the tables of ``collect/store/`` share."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _enable_wal(connection: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch the file to WAL. SQLite answers "database is locked" at once, without waiting out the busy timeout,
    when another process is switching or creating the same new file, so a few short retries."""
    for attempt in range(attempts):
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


class StoreConnection:
    """One SQLite file; safe to share between threads of one process and between processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []  # one per thread that touched the store
        self._connections_lock = threading.Lock()

    def read(self) -> sqlite3.Connection:
        """This thread's connection, for reads (and the writes of an ``immediate`` transaction)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            _enable_wal(connection)
            connection.execute("PRAGMA synchronous=FULL")  # a committed response survives power loss too
            connection.row_factory = sqlite3.Row
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def immediate(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken at once (BEGIN IMMEDIATE): its reads and writes are atomic across processes."""
        connection = self.read()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()

    def close(self) -> None:
        """Close every thread's connection (worker threads commit responses, see the collector)."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
