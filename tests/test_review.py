"""Manual review: the durable decision store, the queue, export/import, the CLI and the sensor."""

import pandas as pd
import pytest
from dagster import Definitions, SkipReason, build_sensor_context

from assets.filtering import filtered_responses, prompt_feedback
from opengrok_dagster.cli import main
from opengrok_dagster.filtering.review import (
    ReviewStore,
    export_queue,
    read_decisions_file,
    review_queue,
)
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.sensors import review_decisions_sensor
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths


def filtered_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "content_hash": ["aaaa1111", "aaaa2222", "bbbb3333", "cccc4444"],
            "example_id": ["e1", "e2", "e3", "e4"],
            "topic": "climate",
            "round": "2026-11-24",
            "template_id": "trends",
            "reasons": [["identity_generalisation"], ["toxicity_borderline"], [], ["refusal"]],
            "scores": "{}",
            "prompt": "p",
            "response": ["All immigrants are ...", "this ref is a clown", "lovely match", "I can't help with that"],
            "state": ["needs_review", "needs_review", "kept", "rejected"],
        }
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    path = HomeLayout(tmp_path).filtered_responses_path
    path.parent.mkdir(parents=True)
    filtered_rows().to_parquet(path)
    return tmp_path


def test_decisions_persist_and_the_latest_wins(tmp_path):
    with ReviewStore(HomeLayout(tmp_path).review_store_path) as store:
        assert store.last_decision_id() == 0
        store.record(["aaaa1111"], "reject", note="generalisation")
        store.record(["aaaa1111"], "accept", note="it is a quote", reviewer="ana")
        with pytest.raises(ValueError, match="decision must be one of"):
            store.record(["aaaa2222"], "maybe")
    with ReviewStore(HomeLayout(tmp_path).review_store_path) as reopened:  # a new process sees the same decisions
        decision = reopened.latest_decisions()["aaaa1111"]
        assert (decision.decision, decision.note, decision.reviewer) == ("accept", "it is a quote", "ana")
        assert reopened.last_decision_id() == 2


def test_queue_holds_undecided_needs_review_rows_once():
    frame = pd.concat([filtered_rows(), filtered_rows().iloc[[0]]])  # the same text collected twice
    queue = review_queue(frame, {})
    assert queue["content_hash"].tolist() == ["aaaa1111", "aaaa2222"]
    assert queue["reasons"].tolist() == ["identity_generalisation", "toxicity_borderline"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_then_import_round_trips_reviewer_decisions(tmp_path, suffix):
    path = tmp_path / f"queue{suffix}"
    queue = review_queue(filtered_rows(), {})
    export_queue(queue.assign(decision=["Accept", ""], note=["fine in context", ""]), path)
    assert read_decisions_file(path) == [("aaaa1111", "accept", "fine in context")]


def test_import_refuses_unknown_decisions_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"content_hash": ["aaaa1111"], "decision": ["perhaps"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="line 2: decision 'perhaps'"):
        read_decisions_file(bad)
    foreign = tmp_path / "foreign.csv"
    pd.DataFrame({"id": [1]}).to_csv(foreign, index=False)
    with pytest.raises(ValueError, match="lacks the columns"):
        read_decisions_file(foreign)
    with pytest.raises(ValueError, match="use a .csv or .parquet"):
        export_queue(review_queue(filtered_rows(), {}), tmp_path / "queue.xlsx")


def test_cli_lists_accepts_rejects_exports_and_imports(home, capsys):
    assert main(["review", "list"]) == 0
    listed = capsys.readouterr().out
    assert "aaaa1111" in listed and "aaaa2222" in listed and "bbbb3333" not in listed
    assert main(["review", "accept", "aaaa1", "--note", "quote", "--reviewer", "ana"]) == 0
    assert main(["review", "reject", "aaaa"]) == 2  # ambiguous prefix
    assert "ambiguous" in capsys.readouterr().err
    assert main(["review", "reject", "bbbb3333"]) == 2  # a kept row is not reviewable
    assert "matches no reviewable response" in capsys.readouterr().err
    export = home / "queue.csv"
    assert main(["review", "export", str(export)]) == 0
    exported = pd.read_csv(export)
    assert exported["content_hash"].tolist() == ["aaaa2222"]
    exported.assign(decision="reject", note="insult").to_csv(export, index=False)
    assert main(["review", "import", str(export)]) == 0
    with ReviewStore(HomeLayout(home).review_store_path) as store:
        decisions = store.latest_decisions()
    assert {h: d.decision for h, d in decisions.items()} == {"aaaa1111": "accept", "aaaa2222": "reject"}
    assert decisions["aaaa1111"].reviewer == "ana"
    capsys.readouterr()
    assert main(["review", "list"]) == 0
    assert "the review queue is empty" in capsys.readouterr().out


def test_cli_without_a_filtered_set_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    assert main(["review", "list"]) == 2
    assert "materialise filtered_responses first" in capsys.readouterr().err


def test_sensor_requests_the_filtered_set_once_per_batch_of_decisions(home, instance):
    context = build_sensor_context(instance=instance)
    assert isinstance(review_decisions_sensor(context), SkipReason)
    with ReviewStore(HomeLayout(home).review_store_path) as store:
        store.record(["aaaa1111", "aaaa2222"], "accept")
    result = review_decisions_sensor(build_sensor_context(instance=instance))
    assert result.cursor == "2" and [r.run_key for r in result.run_requests] == ["review-decisions-2"]
    assert isinstance(review_decisions_sensor(build_sensor_context(instance=instance, cursor="2")), SkipReason)


def test_sensor_targets_only_the_filtered_set(tmp_path):
    defs = Definitions(
        assets=[filtered_responses, prompt_feedback],
        sensors=[review_decisions_sensor],
        resources={"paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml"))},
    )
    job = defs.resolve_job_def(defs.resolve_sensor_def("review_decisions_sensor").job.name)
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == {"filtered_responses"}
