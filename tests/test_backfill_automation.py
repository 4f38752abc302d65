"""Automation around backfills: the re-collection cron from the environment and the run-failure sensor,
with Dagster's testing utilities (the schedule and topic sensor tests are in test_automation.py)."""

import json
import subprocess
import sys

import pytest
from dagster import DagsterEventType, Failure, asset, build_run_status_sensor_context, materialize

from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.sensors import run_failure_recorder
from opengrok_dagster.settings import CONFIG_DIR, SettingsError, recollect_cron
from resources import OpenGrokPaths
from tests.conftest import REPO_ROOT


def test_recollect_cron_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENGROK_RECOLLECT_CRON", "30 */6 * * *")
    assert recollect_cron() == "30 */6 * * *"
    monkeypatch.setenv("OPENGROK_RECOLLECT_CRON", "  ")
    assert recollect_cron() == "0 3 * * *"


@pytest.mark.parametrize("cron", ["every day", "0 25 * * *", "0 3 * *", "*/5 * * * * *"])
def test_invalid_recollect_cron_names_the_variable_and_the_fix(monkeypatch, cron):
    monkeypatch.setenv("OPENGROK_RECOLLECT_CRON", cron)
    with pytest.raises(SettingsError) as error:
        recollect_cron()
    message = str(error.value)
    assert f"OPENGROK_RECOLLECT_CRON={cron!r}" in message and "'0 3 * * *'" in message


@pytest.mark.parametrize(
    ("variable", "value"), [("OPENGROK_RECOLLECT_CRON", "daily"), ("OPENGROK_RETRAIN_CRON", "weekly")]
)
def test_code_location_with_an_invalid_cron_fails_to_load_with_that_message(variable, value):
    """What `dagster dev` shows as the code location's load error."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import opengrok_dagster.schedules"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", variable: value},
    )
    assert loaded.returncode != 0
    assert f"SettingsError: {variable}={value!r} is not a cron schedule" in loaded.stderr


@asset
def unreachable_teacher_asset():
    raise Failure(description="teacher endpoint refused the connection; check OPENGROK_TEACHER_BASE_URL")


def test_run_failure_sensor_records_the_failure_in_the_log_file_and_the_runs_event_log(persistent_instance, tmp_path):
    result = materialize(
        [unreachable_teacher_asset],
        instance=persistent_instance,
        raise_on_error=False,
        tags={"dagster/partition": "2026-11-24|climate"},
    )
    assert not result.success
    run = persistent_instance.get_run_by_id(result.run_id)
    [failure] = [event for event in result.all_events if event.event_type == DagsterEventType.RUN_FAILURE]
    paths = OpenGrokPaths(home=str(tmp_path / "home"), topic_catalogue=str(CONFIG_DIR / "topics.yaml"))
    context = build_run_status_sensor_context(
        sensor_name=run_failure_recorder.name,
        dagster_event=failure,
        dagster_instance=persistent_instance,
        dagster_run=run,
        resources={"paths": paths},
    ).for_run_failure()

    run_failure_recorder(context)

    log_file = HomeLayout(tmp_path / "home").run_failures_log
    [line] = log_file.read_text().splitlines()
    record = json.loads(line)
    assert record["run_id"] == run.run_id and record["job"] == run.job_name
    assert record["partition"] == "2026-11-24|climate"
    assert record["failed_steps"] == ["unreachable_teacher_asset"]
    engine_messages = [
        entry.message for entry in persistent_instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)
    ]
    assert any(str(log_file) in message and "unreachable_teacher_asset" in message for message in engine_messages)


def test_run_failure_sensor_watches_this_code_location_and_is_on_by_default():
    assert run_failure_recorder.default_status.value == "RUNNING"
    assert "paths" in run_failure_recorder.required_resource_keys
