"""The prompts and raw_responses assets on a real Dagster instance against a real loopback HTTP teacher."""

import json

import pandas as pd
import pytest
from dagster import EnvVar, materialize

from assets.collection import prompts, raw_responses
from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.collect.spend import collection_spend
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths, ParquetIOManager, TeacherResource
from tests.conftest import GENERATIVE_ONLY, texts_written_under


CANARY = "xai-canary-9d8c7b6a5f4e3d2c1b0a"
ROUND = "2026-11-24"


def resources_for(tmp_path, base_url, **teacher):
    return {
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
        "teacher": TeacherResource(mode="remote", base_url=base_url, model="grok-test", **teacher),
    }


def run_partition(instance, tmp_path, server, topic="climate", round_key=ROUND, **teacher):
    instance.add_dynamic_partitions(topic_partitions.name, [topic])
    return materialize(
        [prompts, raw_responses],
        resources=resources_for(tmp_path, server.base_url, **teacher),
        instance=instance,
        partition_key=collection_partition_key(topic, round_key),
        run_config=GENERATIVE_ONLY,
        raise_on_error=False,
    )


def test_materialising_a_topic_partition_collects_every_prompt(persistent_instance, tmp_path, loopback_teacher):
    result = run_partition(persistent_instance, tmp_path, loopback_teacher)
    assert result.success
    frame = pd.read_parquet(tmp_path / "assets" / "raw_responses" / ROUND / "climate.parquet")
    grid = pd.read_parquet(tmp_path / "assets" / "prompts" / ROUND / "climate.parquet")
    assert len(frame) == len(grid) == 12 and frame["error"].isna().all()
    assert frame["response"].str.startswith("Answer to:").all()
    for column in (
        "prompt_id",
        "prompt",
        "response",
        "finish_reason",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "latency_s",
        "attempts",
        "error",
        "request_id",
        "collected_at",
        "round",
        "topic",
        "teacher_model",
    ):
        assert column in frame.columns
    metadata = result.asset_materializations_for_node("raw_responses")[0].metadata
    assert metadata["requested"].value == 12 and metadata["error_rate"].value == 0.0
    assert {"latency_p50_s", "latency_p95_s", "cost_usd_estimate", "completion_tokens"} <= set(metadata)
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"unique_prompt_ids": True, "within_daily_budget": True, "error_rate": True}
    (run,) = collection_spend(HomeLayout(tmp_path).response_store_path).by["run"]  # the run that paid, in the store
    assert (run.key, run.requests, run.batch_requests) == (result.run_id, 12, 0)


def test_prompts_metadata_estimates_what_collecting_will_send_and_cost(
    persistent_instance, tmp_path, loopback_teacher
):
    prices = {"prompt_price_per_million": 3.0, "completion_price_per_million": 15.0, "max_tokens": 64}
    first = run_partition(persistent_instance, tmp_path, loopback_teacher, **prices)
    estimate = estimate_of(first)
    assert (estimate["estimate_requests"], estimate["estimate_completion_tokens_max"]) == (12, 12 * 64)
    assert estimate["estimate_completion_tokens"] == 12 * 64  # no stored answers yet: expect the worst case
    assert estimate["estimate_usd_max"] == pytest.approx((estimate["estimate_prompt_tokens"] * 3 + 12 * 64 * 15) / 1e6)
    spent = pd.read_parquet(tmp_path / "assets" / "raw_responses" / ROUND / "climate.parquet")["cost_usd"].sum()
    assert 0 < spent <= estimate["estimate_usd_max"]
    again = run_partition(persistent_instance, tmp_path, loopback_teacher, **prices)
    assert estimate_of(again)["estimate_requests"] == 0
    # the next round expects the stored answers' mean length (the loopback's 16 tokens): within 2x of the real cost
    next_round = run_partition(persistent_instance, tmp_path, loopback_teacher, round_key="2026-11-25", **prices)
    expected = estimate_of(next_round)
    assert (
        expected["estimate_completion_tokens"] == 12 * 16
        and expected["estimate_completion_basis"] == "mean of 12 stored answers"
    )
    real = pd.read_parquet(tmp_path / "assets" / "raw_responses" / "2026-11-25" / "climate.parquet")["cost_usd"].sum()
    assert 0.5 <= expected["estimate_usd"] / real <= 2.0


def estimate_of(result) -> dict:
    metadata = result.asset_materializations_for_node("prompts")[0].metadata
    return {k: v.value for k, v in metadata.items() if k.startswith("estimate_")}


def test_rerunning_a_round_sends_no_requests_and_a_new_round_collects_fresh(
    persistent_instance, tmp_path, loopback_teacher
):
    first_run = run_partition(persistent_instance, tmp_path, loopback_teacher)
    first = len(loopback_teacher.requests)
    second_run = run_partition(persistent_instance, tmp_path, loopback_teacher)
    assert second_run.success and len(loopback_teacher.requests) == first
    # unchanged content keeps its data version, so nothing downstream turns stale
    versions = [
        {
            event.asset_key.path[-1]: event.materialization.tags["dagster/data_version"]
            for event in run.get_asset_materialization_events()
        }
        for run in (first_run, second_run)
    ]
    assert versions[0] == versions[1] and set(versions[0]) == {"prompts", "raw_responses"}
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
    fresh = materialize(
        [prompts, raw_responses],
        resources=resources_for(tmp_path, loopback_teacher.base_url),
        instance=persistent_instance,
        partition_key=collection_partition_key("climate", "2026-11-23"),
        run_config=GENERATIVE_ONLY,
    )
    assert fresh.success and len(loopback_teacher.requests) == 2 * first


def test_too_many_errors_fail_the_blocking_check(persistent_instance, tmp_path):
    with LoopbackTeacher(LoopbackConfig(fault_rate=1.0, faults=("503",))) as failing:
        result = run_partition(persistent_instance, tmp_path, failing, max_attempts=2)
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["error_rate"] is False
    frame = pd.read_parquet(tmp_path / "assets" / "raw_responses" / ROUND / "climate.parquet")
    assert frame["error"].str.contains("gave up after 2 attempts").all()


def _everything_recorded(instance, tmp_path, capfd) -> str:
    events = [entry for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
    runs = [str(run.run_config) + str(run.tags) for run in instance.get_runs()]
    captured = capfd.readouterr()
    return "\n".join([*(repr(e) for e in events), *runs, texts_written_under(tmp_path), captured.out, captured.err])


@pytest.mark.parametrize("server_key", [CANARY, "a-different-key"], ids=["accepted", "rejected-401"])
def test_canary_api_key_never_appears_in_logs_events_metadata_or_files(
    persistent_instance, tmp_path, monkeypatch, capfd, server_key
):
    monkeypatch.setenv("OPENGROK_TEST_TEACHER_KEY", CANARY)
    with LoopbackTeacher(LoopbackConfig(expected_api_key=server_key)) as server:
        result = run_partition(persistent_instance, tmp_path, server, api_key=EnvVar("OPENGROK_TEST_TEACHER_KEY"))
        assert server.requests and all(r.authorization == f"Bearer {CANARY}" for r in server.requests)
    assert result.success is (server_key == CANARY)
    if server_key != CANARY:
        failure = result.failure_data_for_node("raw_responses")
        assert "HTTP 401" in failure.error.message + (failure.user_failure_data.description or "")
    recorded = _everything_recorded(persistent_instance, tmp_path, capfd)
    # the scan really covers what was written: the response data, or the failure
    assert ("grok-test" if server_key == CANARY else "HTTP 401") in recorded and "raw_responses" in recorded
    assert CANARY not in recorded


def test_remote_mode_without_endpoint_names_the_variables(persistent_instance, tmp_path):
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
    result = materialize(
        [prompts, raw_responses],
        resources=resources_for(tmp_path, None) | {"teacher": TeacherResource(mode="remote")},
        instance=persistent_instance,
        partition_key=collection_partition_key("climate", ROUND),
        run_config=GENERATIVE_ONLY,
        raise_on_error=False,
    )
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "set OPENGROK_TEACHER_BASE_URL and OPENGROK_TEACHER_MODEL" in str(failure.event_specific_data.error)
    assert not (tmp_path / "assets" / "raw_responses").exists()


def test_logprobs_are_stored_with_each_response_and_in_raw_responses(persistent_instance, tmp_path, loopback_teacher):
    result = run_partition(persistent_instance, tmp_path, loopback_teacher, top_logprobs=3)
    assert result.success
    frame = pd.read_parquet(tmp_path / "assets" / "raw_responses" / ROUND / "climate.parquet")
    for response, logprobs in zip(frame["response"], frame["logprobs"]):
        tokens = json.loads(logprobs)
        assert "".join(token["token"] for token in tokens) == response
        assert all(
            len(token["top_logprobs"]) == 3 and bytes(token["bytes"]).decode() == token["token"] for token in tokens
        )
    plain = run_partition(persistent_instance, tmp_path, loopback_teacher, round_key="2026-11-25")
    assert (
        plain.success
        and pd.read_parquet(tmp_path / "assets" / "raw_responses" / "2026-11-25" / "climate.parquet")["logprobs"]
        .isna()
        .all()
    )


def test_an_endpoint_without_logprobs_stops_the_collection_saying_so(persistent_instance, tmp_path):
    with LoopbackTeacher(LoopbackConfig(returns_logprobs=False)) as server:
        result = run_partition(persistent_instance, tmp_path, server, top_logprobs=3)
    failure = result.failure_data_for_node("raw_responses").user_failure_data
    assert "answered without logprobs though top_logprobs=3 was requested" in failure.description
    assert not (tmp_path / "assets" / "raw_responses").exists()


@pytest.mark.timing  # the partition must fail in seconds, not after every prompt's retries
def test_a_closed_port_fails_the_partition_in_seconds_leaving_prompts_missing_for_the_rerun(
    persistent_instance, tmp_path
):
    import sqlite3
    from collections import Counter

    from opengrok_dagster.offline.server import free_loopback_port

    closed = f"http://127.0.0.1:{free_loopback_port()}/v1"  # nothing listens there
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
    result = materialize(
        [prompts, raw_responses],
        resources=resources_for(tmp_path, closed),
        instance=persistent_instance,
        partition_key=collection_partition_key("climate", ROUND),
        run_config=GENERATIVE_ONLY,
        raise_on_error=False,
    )
    description = result.failure_data_for_node("raw_responses").user_failure_data.description
    assert f"cannot reach the teacher endpoint {closed}: 3 connection attempts in a row failed" in description
    assert "OPENGROK_TEACHER_BASE_URL" in description and "\n" not in description  # one line
    step = {
        entry.dagster_event.event_type_value: entry.timestamp
        for entry in persistent_instance.all_logs(result.run_id)
        if entry.dagster_event and entry.dagster_event.step_key == "raw_responses"
    }
    assert step["STEP_FAILURE"] - step["STEP_START"] < 10.0
    with sqlite3.connect(HomeLayout(tmp_path).response_store_path) as store:
        # no error rows: nothing counts against the error rate, and every prompt is asked again
        assert store.execute("SELECT COUNT(*) FROM responses").fetchone() == (0,)
    with LoopbackTeacher(LoopbackConfig()) as live:
        rerun = run_partition(persistent_instance, tmp_path, live)
        asked = Counter(request.user_prompt for request in live.requests)
    assert rerun.success and len(asked) == 12 and set(asked.values()) == {1}
