"""SQLite helpers shared by the stores (responses, review decisions, evaluation answers)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence


# Values bound per ``IN (...)`` query: below SQLite's bound-parameter limit (999 before 3.32), with room for
# the query's other parameters.
IN_CHUNK = 500


def select_in(
    connection: sqlite3.Connection, sql: str, parameters: Sequence, values: Iterable, chunk: int = IN_CHUNK
) -> Iterator:
    """The rows of ``sql`` for every value in ``values``, asked ``chunk`` values at a time.

    ``sql`` holds one ``{marks}`` where the ``IN`` list goes (``... AND prompt_id IN ({marks})``); ``parameters``
    are bound before the chunk's values, so the list must come last in the query.
    """
    wanted = list(values)
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        yield from connection.execute(sql.format(marks=",".join("?" * len(part))), (*parameters, *part))
