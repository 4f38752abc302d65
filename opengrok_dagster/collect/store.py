"""The durable response store: every teacher response, or its final error, committed the moment it arrives.

SQLite rather than DuckDB: it ships with Python, commits one small transaction per response cheaply, and in
WAL mode lets several processes (parallel topic partitions, the review CLI, the UI) read and write the same
file; DuckDB allows one writing process at a time. A success is never overwritten, so nothing paid for is
lost or re-bought; an error row is replaced when a later run gets a response.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from opengrok_dagster.collect.result import TeacherResult
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
# Requests and tokens admitted per rate-limit scope (one teacher account), shared by every process.
_RATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_events (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    at REAL NOT NULL,
    tokens REAL NOT NULL
)
"""
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
# What spend is grouped by in :meth:`ResponseStore.spend_by`; a partition reads as Dagster writes its key.
SPEND_GROUPS = {
    "teacher": "teacher_model",
    "partition": "round || '|' || topic",
    "run": "COALESCE(run_id, '')",
    "day": "substr(collected_at, 1, 10)",  # collected_at is UTC ISO 8601
}


class Claim(Enum):
    """What :meth:`ResponseStore.claim` found: the prompt is now ours to send, already answered, or being
    sent by another live run."""

    MINE = "mine"
    ANSWERED = "answered"
    HELD = "held"


@dataclass(frozen=True)
class ResponseKey:
    """What identifies one paid-for response: the prompt, who answered, how it was sampled, and when (round)."""

    teacher_model: str
    sampling_key: str
    round: str


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


class ResponseStore:
    """One SQLite file; safe to share between threads of one process and between processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []  # one per thread that touched the store
        self._connections_lock = threading.Lock()
        # One write transaction: processes opening a new or older store at once would otherwise both see a column
        # missing and both add it ("duplicate column name").
        with self._immediate() as connection:
            for schema in (_SCHEMA, _CLAIMS_SCHEMA, _RATE_SCHEMA, _SPEND_SCHEMA, _BATCHES_SCHEMA):
                connection.execute(schema)
            connection.execute("CREATE INDEX IF NOT EXISTS rate_events_scope_at ON rate_events (scope, at)")
            connection.execute("CREATE INDEX IF NOT EXISTS spend_day ON spend (day)")
            connection.execute("CREATE INDEX IF NOT EXISTS spend_run ON spend (run_id)")
            present = {row["name"] for row in connection.execute("PRAGMA table_info(responses)")}
            for name, sql_type in _ADDED_COLUMNS.items():
                if name not in present:
                    connection.execute(f"ALTER TABLE responses ADD COLUMN {name} {sql_type}")

    def _connection(self) -> sqlite3.Connection:
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
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken at once (BEGIN IMMEDIATE): its reads and writes are atomic across processes."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()

    def claim(self, key: ResponseKey, prompt_id: str, owner: str, lease_s: float) -> Claim:
        """Claim ``prompt_id`` for ``owner`` until ``lease_s`` from now, unless it is answered or claimed by
        another owner whose lease has not lapsed; checked and taken in one transaction."""
        ident = (prompt_id, key.teacher_model, key.sampling_key, key.round)
        where = "prompt_id=? AND teacher_model=? AND sampling_key=? AND round=?"
        now = time.time()
        with self._immediate() as connection:
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

    def renew_claims(self, owner: str, lease_s: float) -> None:
        """Extend every claim of ``owner`` (a running collection's heartbeat)."""
        with self._immediate() as connection:
            connection.execute("UPDATE claims SET expires_at=? WHERE owner=?", (time.time() + lease_s, owner))

    def release_claim(self, key: ResponseKey, prompt_id: str, owner: str) -> None:
        """Give up one claim without an answer (the budget refused the request): the prompt stays missing."""
        with self._immediate() as connection:
            connection.execute(
                "DELETE FROM claims WHERE prompt_id=? AND teacher_model=? AND sampling_key=? AND round=? AND owner=?",
                (prompt_id, key.teacher_model, key.sampling_key, key.round, owner),
            )

    def release_claims(self, owner: str) -> None:
        """Give up every claim of ``owner`` still open (prompts it did not send stay missing for the next run)."""
        with self._immediate() as connection:
            connection.execute("DELETE FROM claims WHERE owner=?", (owner,))

    def admit_rate(
        self, scope: str, window_s: float, requests: float | None, tokens: float | None, amount: float
    ) -> tuple[int | None, float]:
        """Admit one request of ``amount`` tokens under at most ``requests`` requests and ``tokens`` tokens per
        ``window_s`` in ``scope``, across processes: returns (event id, 0) when admitted, else (None, seconds
        until it may be). A request larger than the whole token limit is admitted into an empty window."""
        now = time.time()
        with self._immediate() as connection:
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

    def settle_rate(self, event_id: int, tokens: float) -> None:
        """Replace an admitted request's estimated tokens with what the server reported."""
        with self._immediate() as connection:
            connection.execute("UPDATE rate_events SET tokens=? WHERE id=?", (tokens, event_id))

    def reserve_spend(
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
        with self._immediate() as connection:
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

    def settle_spend(self, reservation: int, actual_usd: float) -> None:
        with self._immediate() as connection:
            connection.execute("UPDATE spend SET actual_usd=? WHERE id=?", (actual_usd, reservation))

    def spent(self, *, day: str | None = None, run_id: str | None = None, partition: str | None = None) -> float:
        """USD spent (settled, plus open reservations at their worst case) in a day, run and/or partition."""
        filters = {"day": day, "run_id": run_id, "partition": partition}
        return _spent(self._connection(), {column: value for column, value in filters.items() if value is not None})

    def open_batch(self, key: ResponseKey, topic: str) -> dict | None:
        """The unfinished batch submission of this key and topic, if any: ``prompts`` maps each prompt id
        in it to its budget reservation (or None)."""
        row = (
            self._connection()
            .execute(
                "SELECT * FROM batches WHERE teacher_model=? AND sampling_key=? AND round=? AND topic=? AND state NOT IN ('done', 'abandoned') "
                "ORDER BY created_at LIMIT 1",
                (key.teacher_model, key.sampling_key, key.round, topic),
            )
            .fetchone()
        )
        return dict(row, prompts=json.loads(row["prompts"])) if row else None

    def add_batch(self, submission: str, key: ResponseKey, topic: str, prompts: dict[str, int | None]) -> None:
        with self._immediate() as connection:
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

    def set_batch_state(self, submission: str, state: str, batch_id: str | None = None) -> None:
        with self._immediate() as connection:
            connection.execute(
                "UPDATE batches SET state=?, batch_id=COALESCE(?, batch_id) WHERE submission=?",
                (state, batch_id, submission),
            )

    def answered_prompt_ids(self, key: ResponseKey, prompt_ids: Iterable[str]) -> set[str]:
        """The prompts that already have a successful response under ``key``: never request them again."""
        rows = select_in(
            self._connection(),
            "SELECT prompt_id FROM responses WHERE teacher_model=? AND sampling_key=? AND round=? "
            "AND error IS NULL AND prompt_id IN ({marks})",
            (key.teacher_model, key.sampling_key, key.round),
            prompt_ids,
        )
        return {row["prompt_id"] for row in rows}

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
        with self._immediate() as connection:
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

    def spend_by(self, group: str | None = None) -> list[dict]:
        """What the stored responses cost, in total or per ``group`` (a key of :data:`SPEND_GROUPS`): requests
        (one stored outcome per prompt), errors, prompt and completion tokens, USD, and the batch-priced share."""
        key = SPEND_GROUPS[group] if group else "'total'"
        rows = self._connection().execute(
            f"SELECT {key} AS key, COUNT(*) AS requests, COALESCE(SUM(error IS NOT NULL), 0) AS errors, "
            "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
            "COALESCE(SUM(cost_usd), 0.0) AS usd, COALESCE(SUM(batch_id IS NOT NULL), 0) AS batch_requests, "
            "COALESCE(SUM(CASE WHEN batch_id IS NOT NULL THEN cost_usd END), 0.0) AS batch_usd "
            "FROM responses GROUP BY 1 ORDER BY 1"
        )
        return [dict(row) for row in rows]

    def unsettled_spend(self) -> tuple[int, float]:
        """(count, USD at their worst case) of budget reservations never settled: requests of a run killed while
        they were in flight, which the provider may have billed."""
        row = (
            self._connection()
            .execute("SELECT COUNT(*), COALESCE(SUM(reserved_usd), 0.0) FROM spend WHERE actual_usd IS NULL")
            .fetchone()
        )
        return int(row[0]), float(row[1])

    def completion_history(self, teacher_model: str, sampling_key: str) -> tuple[float | None, int]:
        """(mean completion tokens, count) of the successful answers of this teacher and sampling, any round."""
        row = (
            self._connection()
            .execute(
                "SELECT AVG(completion_tokens) AS mean, COUNT(completion_tokens) AS n FROM responses "
                "WHERE teacher_model=? AND sampling_key=? AND error IS NULL AND completion_tokens IS NOT NULL",
                (teacher_model, sampling_key),
            )
            .fetchone()
        )
        return row["mean"], row["n"]

    def fetch(self, key: ResponseKey, prompt_ids: Iterable[str]) -> list[dict]:
        rows = select_in(
            self._connection(),
            f"SELECT {', '.join(STORED_COLUMNS)} FROM responses WHERE teacher_model=? AND sampling_key=? "
            "AND round=? AND prompt_id IN ({marks})",
            (key.teacher_model, key.sampling_key, key.round),
            prompt_ids,
        )
        return [dict(row) for row in rows]

    def close(self) -> None:
        """Close every thread's connection (worker threads commit responses, see the collector)."""
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()


def _spent(connection: sqlite3.Connection, filters: dict[str, str]) -> float:
    """Settled costs plus open reservations at their worst case, of the spend rows matching ``filters``."""
    where = " AND ".join(f"{column}=?" for column in filters) or "1"
    row = connection.execute(
        f"SELECT COALESCE(SUM(COALESCE(actual_usd, reserved_usd)), 0) FROM spend WHERE {where}", list(filters.values())
    ).fetchone()
    return float(row[0])
