"""Manual review decisions, durable in SQLite under OPENGROK_HOME and keyed by the response's content hash.

Keyed by content hash (not by prompt or round), a decision survives re-collection: the same scrubbed text
collected again in a later round gets the same decision at the next materialisation. Decisions are
append-only; the latest one for a hash wins, and the increasing decision id is the sensor's cursor.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from opengrok_dagster.layout import HomeLayout


ACCEPT, REJECT = "accept", "reject"
DECISIONS = (ACCEPT, REJECT)
QUEUE_COLUMNS = (
    "content_hash",
    "example_id",
    "topic",
    "round",
    "template_id",
    "reasons",
    "scores",
    "prompt",
    "response",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_decisions (
    decision_id INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject')),
    note TEXT,
    reviewer TEXT,
    decided_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS review_decisions_by_hash ON review_decisions (content_hash, decision_id);
"""


@dataclass(frozen=True)
class Decision:
    decision_id: int
    content_hash: str
    decision: str
    note: str | None
    reviewer: str | None
    decided_at: str


class ReviewStore:
    """``reviews.sqlite`` in WAL mode, so the CLI, the sensor and a run can use it at the same time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=60.0)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.executescript(_SCHEMA)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def record(
        self, content_hashes: Iterable[str], decision: str, note: str | None = None, reviewer: str | None = None
    ) -> int:
        """Append one decision per hash in a single transaction; returns how many were recorded."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        decided_at = datetime.now(UTC).isoformat()
        rows = [(h, decision, note or None, reviewer or None, decided_at) for h in content_hashes]
        with self._connection:
            self._connection.executemany(
                "INSERT INTO review_decisions (content_hash, decision, note, reviewer, decided_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def latest_decisions(self) -> dict[str, Decision]:
        """The newest decision for each content hash."""
        cursor = self._connection.execute(
            "SELECT decision_id, content_hash, decision, note, reviewer, decided_at FROM review_decisions "
            "WHERE decision_id IN (SELECT MAX(decision_id) FROM review_decisions GROUP BY content_hash)"
        )
        return {row[1]: Decision(*row) for row in cursor}

    def last_decision_id(self) -> int:
        return self._connection.execute("SELECT COALESCE(MAX(decision_id), 0) FROM review_decisions").fetchone()[0]


def review_queue(filtered: pd.DataFrame, decisions: dict[str, Decision]) -> pd.DataFrame:
    """The rows still waiting for a reviewer: ``needs_review`` and without a decision yet, one per hash."""
    waiting = filtered[(filtered["state"] == "needs_review") & ~filtered["content_hash"].isin(decisions.keys())]
    queue = waiting.drop_duplicates("content_hash").loc[:, list(QUEUE_COLUMNS)].copy()
    queue["reasons"] = queue["reasons"].map(lambda reasons: ",".join(reasons))
    queue["decision"] = ""
    queue["note"] = ""
    return queue.reset_index(drop=True)


def export_queue(queue: pd.DataFrame, path: str | Path) -> None:
    """CSV or Parquet by extension, with empty ``decision`` and ``note`` columns for the reviewer to fill."""
    path = Path(path)
    if path.suffix == ".csv":
        queue.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        queue.to_parquet(path, index=False)
    else:
        raise ValueError(f"cannot export the review queue to {path}: use a .csv or .parquet file name")


def read_decisions_file(path: str | Path) -> list[tuple[str, str, str | None]]:
    """(content_hash, decision, note) from an exported queue a reviewer filled in; blank decisions skipped."""
    path = Path(path)
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise ValueError(f"cannot import review decisions from {path}: use a .csv or .parquet file")
    except (OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"cannot read review decisions from {path}: {exc}") from None
    missing = {"content_hash", "decision"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}; import a file made by `opengrok review export`")
    decisions = []
    for line, row in enumerate(frame.to_dict("records"), start=2):
        decision = str(row["decision"] or "").strip().lower()
        if not decision:
            continue
        if decision not in DECISIONS:
            raise ValueError(f"{path} line {line}: decision {row['decision']!r} is not one of {DECISIONS}")
        note = str(row.get("note") or "").strip() or None
        decisions.append((str(row["content_hash"]).strip(), decision, note))
    return decisions


def read_filtered(home: str | Path) -> pd.DataFrame:
    path = HomeLayout(Path(home)).filtered_responses_path
    if not path.exists():
        raise ValueError(
            f"no filtered set at {path}; materialise filtered_responses first (Dagster UI or `dagster asset materialize`)"
        )
    return pd.read_parquet(path)


def reviewable(filtered: pd.DataFrame) -> pd.DataFrame:
    """Rows waiting for review, and rows already decided (a reviewer may change a decision)."""
    decided = filtered["reasons"].map(lambda reasons: "review_accepted" in reasons or "review_rejected" in reasons)
    return filtered[(filtered["state"] == "needs_review") | decided]


def resolve_hashes(filtered: pd.DataFrame, given: Iterable[str]) -> list[str]:
    """Full content hashes for the full hashes or unique prefixes of reviewable rows."""
    hashes = reviewable(filtered)["content_hash"].unique()
    resolved = []
    for prefix in given:
        matches = [h for h in hashes if h.startswith(prefix.strip().lower())]
        if len(matches) != 1:
            problem = "matches no reviewable response" if not matches else f"is ambiguous ({len(matches)} matches)"
            raise ValueError(f"content hash {prefix!r} {problem}; `opengrok review list` shows the queue")
        resolved.append(matches[0])
    return resolved
