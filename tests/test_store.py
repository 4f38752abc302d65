import multiprocessing

from opengrok_dagster.collect.result import TeacherResult
from opengrok_dagster.collect.store import ResponseKey, ResponseStore


KEY = ResponseKey("grok-test", '{"max_tokens":64}', "2026-11-24")


def result(text=None, error=None, attempts=1):
    return TeacherResult(
        text, "stop" if text else None, "grok-test", 3, 4, 0.01, 0.2, attempts, "req", error, None if text else 503
    )


def test_success_is_durable_across_connections_and_never_overwritten(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite")
    store.responses.record(KEY, "p1", "climate", result(text="first"))
    store.responses.record(
        KEY, "p1", "climate", result(text="second")
    )  # a duplicate delivery must not replace what was paid for
    store.close()
    reopened = ResponseStore(tmp_path / "r.sqlite")
    [row] = reopened.responses.fetch(KEY, ["p1"])
    assert row["text"] == "first" and row["error"] is None
    assert reopened.responses.answered(KEY, ["p1", "p2"]) == {"p1"}


def test_error_row_is_replaced_by_a_later_success(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite")
    store.responses.record(KEY, "p1", "climate", result(error="gave up", attempts=6))
    assert store.responses.answered(KEY, ["p1"]) == set()
    store.responses.record(KEY, "p1", "climate", result(text="ok"))
    [row] = store.responses.fetch(KEY, ["p1"])
    assert (row["text"], row["error"]) == ("ok", None)


def test_key_separates_models_sampling_and_rounds(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite")
    store.responses.record(KEY, "p1", "climate", result(text="ok"))
    for other in (
        ResponseKey("other-model", KEY.sampling_key, KEY.round),
        ResponseKey(KEY.teacher_model, '{"max_tokens":128}', KEY.round),
        ResponseKey(KEY.teacher_model, KEY.sampling_key, "2026-11-25"),
    ):
        assert store.responses.answered(other, ["p1"]) == set()


def test_lookups_work_beyond_sqlite_parameter_limits(tmp_path):
    store = ResponseStore(tmp_path / "r.sqlite")
    ids = [f"p{i}" for i in range(1234)]
    for prompt_id in ids[::3]:
        store.responses.record(KEY, prompt_id, "climate", result(text="ok"))
    assert store.responses.answered(KEY, ids) == set(ids[::3])
    assert len(store.responses.fetch(KEY, ids)) == len(ids[::3])


def test_a_refusal_is_stored_as_answered_and_an_old_store_gains_the_new_columns(tmp_path):
    import sqlite3

    from opengrok_dagster.collect.store import responses as responses_table

    old = sqlite3.connect(tmp_path / "old.sqlite")  # a store written before the anomaly column existed
    old.execute(responses_table._SCHEMA.replace("    anomaly TEXT,\n", "").replace("    logprobs TEXT,\n", ""))
    old.commit()
    old.close()
    store = ResponseStore(tmp_path / "old.sqlite")
    refusal = TeacherResult(None, "content_filter", "grok-test", 3, 0, 0.0, 0.1, 1, "req", anomaly="content_filter")
    store.responses.record(KEY, "p1", "climate", refusal)
    [row] = store.responses.fetch(KEY, ["p1"])
    assert (row["text"], row["anomaly"], row["finish_reason"]) == (None, "content_filter", "content_filter")
    assert store.responses.answered(KEY, ["p1"]) == {"p1"}  # paid for: not requested again


def _open_after(barrier, path, errors):
    barrier.wait()
    try:
        ResponseStore(path).close()
    except Exception as exc:  # reported to the parent: the assertion names it
        errors.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Opening a store creates and migrates its schema; several processes doing so at once (concurrent first runs)
    must not race between seeing a column missing and adding it."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for attempt in range(20):
        barrier = context.Barrier(8)
        path = tmp_path / f"store-{attempt}.sqlite"
        children = [context.Process(target=_open_after, args=(barrier, path, errors)) for _ in range(8)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        assert all(child.exitcode == 0 for child in children)
    found = [] if errors.empty() else [errors.get() for _ in range(errors.qsize())]
    assert found == []
