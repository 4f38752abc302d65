"""The chunked ``IN`` query every store uses: all rows, whatever the chunk boundaries, parameters bound first."""

import sqlite3

import pytest

from opengrok_dagster.evaluation.answers import AnswerCache
from opengrok_dagster.sqlite import IN_CHUNK, select_in


@pytest.mark.parametrize("count", [0, 1, IN_CHUNK - 1, IN_CHUNK, IN_CHUNK + 1, 3 * IN_CHUNK + 7])
def test_select_in_returns_every_matching_row_across_chunks(count):
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (owner TEXT, key INTEGER)")
    connection.executemany("INSERT INTO t VALUES (?, ?)", [(owner, i) for owner in ("a", "b") for i in range(2000)])
    wanted = range(0, 2 * count, 2)  # every other key, as a generator-like iterable
    rows = list(select_in(connection, "SELECT key FROM t WHERE owner = ? AND key IN ({marks})", ("b",), wanted))
    assert sorted(key for (key,) in rows) == [k for k in wanted if k < 2000]


def test_answer_cache_reads_more_keys_than_sqlite_binds_at_once(tmp_path):
    cache = AnswerCache(tmp_path / "answers.sqlite")
    answers = {f"k{i}": f"answer {i}" for i in range(2 * IN_CHUNK + 3)}
    cache.put_many("m", answers)
    assert cache.get_many("m", list(answers)) == answers
    assert cache.get_many("other", list(answers)) == {}
