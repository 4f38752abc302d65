"""The Dagster instance settings OpenGrok relies on, and the local instance config it writes.

Two concurrency pools keep shared hardware and budgets whole across every run, however it was started (UI,
schedule, sensor, declarative automation, backfill): ``gpu`` (lora_checkpoint, eval_report: one job on the
GPU, or on every CPU core, at a time) and ``teacher`` (raw_responses: one collecting step at a time, so the
teacher's RPM/TPM limits hold for the whole deployment). Both take the instance's default pool limit, 1.
docker/dagster.yaml carries the same ``concurrency.pools`` block (tests/test_docker_config.py keeps them equal).

A run that holds a pool slot and dies without ending (SIGKILL, out of memory) keeps its slot: under the daemon,
run monitoring frees the slots of runs that ended (marked failed or terminated in the UI) after a minute;
`opengrok run`, which runs in process, marks its own abandoned runs failed and frees their slots when it starts.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import yaml


GPU_POOL = "gpu"
TEACHER_POOL = "teacher"
OPENGROK_POOLS = (GPU_POOL, TEACHER_POOL)
# op granularity: a run waiting for the pool holds no step slot, only its place in the pool's queue
POOLS = {"default_limit": 1, "granularity": "op"}
# the daemon frees the pool slots of a run that ended without releasing them (a killed worker) this much later
FREE_SLOTS_AFTER_RUN_END_SECONDS = 60
LOCAL_INSTANCE_CONFIG = {
    "telemetry": {"enabled": False},
    "concurrency": {"pools": POOLS},
    "run_monitoring": {"enabled": True, "free_slots_after_run_end_seconds": FREE_SLOTS_AFTER_RUN_END_SECONDS},
}
# `opengrok run` tags its in-process runs with where they run, so that a later one can tell they were abandoned
RUNNER_HOST_TAG, RUNNER_PID_TAG = "opengrok/runner_host", "opengrok/runner_pid"

WRITTEN_BY_OPENGROK = (
    "# Written by `opengrok` for `opengrok run` and `make dev` (opengrok_dagster/instance.py): local SQLite\n"
    "# storage, no telemetry, the gpu and teacher pools one step at a time. Remove this line to keep your edits.\n"
)
# What earlier versions wrote, with no pools: upgraded in place, since nobody edited it.
_EARLIER_LOCAL_CONFIG = "telemetry:\n  enabled: false\n"


def write_local_instance_config(dagster_home: Path) -> Path:
    """Write ``dagster.yaml`` in ``dagster_home`` unless someone else's file is there (one without our header)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    wanted = WRITTEN_BY_OPENGROK + yaml.safe_dump(LOCAL_INSTANCE_CONFIG, sort_keys=False)
    current = path.read_text() if path.exists() else None
    if (
        current is None
        or current == _EARLIER_LOCAL_CONFIG
        or (current.startswith(WRITTEN_BY_OPENGROK) and current != wanted)
    ):
        path.write_text(wanted)
    return path


def set_missing_pool_limits(instance) -> dict[str, int]:
    """Give each OpenGrok pool with no limit on ``instance`` the instance's default pool limit, set explicitly;
    the limits it set. A pool already limited (by an earlier call, by `dagster instance concurrency set`) keeps
    its limit.

    Why: Dagster 1.13 gives a pool its default limit when a step first asks for it. When two runs ask at once,
    on PostgreSQL the insert fails the losing run (dagster-io/dagster#33552, open), and on SQLite both steps have
    been seen to run together (tests/test_gpu_pool.py, once in CI). Every `opengrok` command that opens the local
    instance (``open_instance``; `make dev` runs one first) and the deployment's daemon (`opengrok pools`) call this
    before any run starts, so no run takes that path.
    """
    storage = instance.event_log_storage
    default_limit = instance.global_op_concurrency_default_limit
    if default_limit is None or not storage.supports_global_concurrency_limits:
        return {}
    limited = set(storage.get_concurrency_keys())
    missing = {pool: default_limit for pool in OPENGROK_POOLS if pool not in limited}
    for pool, limit in missing.items():
        storage.set_concurrency_slots(pool, limit)
    return missing


def runner_tags() -> dict[str, str]:
    return {RUNNER_HOST_TAG: socket.gethostname(), RUNNER_PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def release_abandoned_runs(instance) -> list[str]:
    """Mark failed the runs `opengrok run` started on this host whose process is gone, and free their pool slots,
    so that the next run does not wait for them forever; their ids."""
    from dagster import DagsterRunStatus, RunsFilter

    mine = RunsFilter(statuses=[DagsterRunStatus.STARTED], tags={RUNNER_HOST_TAG: socket.gethostname()})
    abandoned = [run for run in instance.get_runs(mine) if not _alive(int(run.tags.get(RUNNER_PID_TAG, "0")))]
    for run in abandoned:
        instance.report_run_failed(run, "its `opengrok run` process ended without finishing it (killed, or OOM)")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return [run.run_id for run in abandoned]
