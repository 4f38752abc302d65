"""One GPU job at a time, proved on a real instance and daemon: the instance config `opengrok` writes for local use
(the one `opengrok run` and `make dev` open), a real `dagster-daemon`, and two fine-tune runs submitted to its
queued run coordinator by `dagster job backfill`. Both runs are in progress together; their gpu-pool steps run
one after the other."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from opengrok_dagster.cli.execution import execute
from opengrok_dagster.instance import (
    GPU_POOL,
    TEACHER_POOL,
    release_abandoned_runs,
    set_missing_pool_limits,
    write_local_instance_config,
)
from tests.conftest import REPO_ROOT


pytestmark = pytest.mark.integration

LOCATION = REPO_ROOT / "tests" / "locations" / "gpu_pool.py"


@pytest.mark.timing  # runs must finish within a deadline; holds overlap in real time
def test_two_fine_tunes_requested_together_hold_the_gpu_one_after_the_other(tmp_path):
    home, windows = tmp_path / "dagster_home", tmp_path / "windows"
    windows.mkdir()
    write_local_instance_config(home)
    with DagsterInstance.from_config(str(home)) as instance:  # storage made once: two processes would race to make it
        assert instance.event_log_storage.supports_global_concurrency_limits
        # as `opengrok` opens it (open_instance): the pools limited before any run asks for them
        assert set_missing_pool_limits(instance) == {GPU_POOL: 1, TEACHER_POOL: 1}
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "OPENGROK_POOL_TEST_DIR": str(windows),
        "PYTHONPATH": str(REPO_ROOT),
    }
    log = (tmp_path / "daemon.log").open("w")
    daemon_cli = Path(sys.executable).with_name("dagster-daemon")  # installed beside this interpreter with dagster
    daemon = subprocess.Popen(
        [str(daemon_cli), "run", "-f", str(LOCATION)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        submitted = subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster",
                "job",
                "backfill",
                "-f",
                str(LOCATION),
                "-j",
                "fine_tune_job",
                "--partitions",
                "none,hard",
                "--noprompt",
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        with DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 420
            while True:
                runs = instance.get_runs(RunsFilter(job_name="fine_tune_job"))
                if len(runs) == 2 and all(run.is_finished for run in runs):
                    break
                assert time.monotonic() < deadline, f"runs did not finish: {[(r.run_id, r.status) for r in runs]}"
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                time.sleep(1)
            assert [run.status for run in runs] == [DagsterRunStatus.SUCCESS] * 2, (
                tmp_path / "daemon.log"
            ).read_text()[-3000:]
            assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1  # the steps claimed it
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)  # the daemon's own session: it and the code server it started
            daemon.wait(timeout=60)
    assert len(list(windows.glob("prepare-*"))) == 2  # the barrier passed: both runs were in progress together
    (first_start, first_end), (second_start, second_end) = sorted(
        tuple(map(float, (windows / f"fine_tune-{mode}").read_text().split())) for mode in ("none", "hard")
    )
    assert first_end <= second_start, (
        f"gpu steps overlapped: {first_start:.1f}-{first_end:.1f} and {second_start:.1f}-{second_end:.1f}"
    )


HOLD_THE_GPU = """
import sys
from dagster import DagsterInstance
from opengrok_dagster.cli.execution import execute
from tests.locations.gpu_pool import defs
with DagsterInstance.from_config(sys.argv[1]) as instance:
    execute(instance, defs.resolve_job_def("gpu_step_job"), "holding the gpu", "none")
"""


@pytest.mark.timing  # the next fine-tune must start within 120 s
def test_a_killed_opengrok_run_does_not_keep_the_gpu_from_the_next(tmp_path, monkeypatch):
    """`opengrok run` SIGKILLed (or out of memory) inside a gpu step leaves its slot claimed and its run started;
    the next `opengrok run` marks that run failed and frees the slot, then gets the GPU at once."""
    home, windows = tmp_path / "dagster_home", tmp_path / "windows"
    windows.mkdir()
    write_local_instance_config(home)
    monkeypatch.setenv("OPENGROK_POOL_TEST_DIR", str(windows))  # for the next run, in this process
    holding = {"OPENGROK_POOL_TEST_DIR": str(windows), "OPENGROK_POOL_TEST_HOLD_S": "600"}
    env = {**os.environ, **holding, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", HOLD_THE_GPU, str(home)], cwd=REPO_ROOT, env=env)
    deadline = time.monotonic() + 240
    while not (windows / "holding-none").exists():
        assert child.poll() is None and time.monotonic() < deadline, "the child never held the gpu"
        time.sleep(0.2)
    child.kill()
    child.wait()
    with DagsterInstance.from_config(str(home)) as instance:
        [held] = instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots
        assert instance.get_run_by_id(held.run_id).status == DagsterRunStatus.STARTED
        assert release_abandoned_runs(instance) == [held.run_id]
        assert instance.get_run_by_id(held.run_id).status == DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots == []
        from tests.locations.gpu_pool import defs

        started = time.monotonic()
        assert execute(instance, defs.resolve_job_def("gpu_step_job"), "next fine-tune", "hard")
        assert time.monotonic() - started < 120
        assert release_abandoned_runs(instance) == []  # a finished run is not touched
