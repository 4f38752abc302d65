"""The Dagster instance settings OpenGrok relies on, and the local instance config it writes.

Two concurrency pools keep shared hardware and budgets whole across every run, however it was started (UI,
schedule, sensor, declarative automation, backfill): ``gpu`` (lora_checkpoint, eval_report: one job on the
GPU, or on every CPU core, at a time) and ``teacher`` (raw_responses: one collecting step at a time, so the
teacher's RPM/TPM limits hold for the whole deployment). Both take the instance's default pool limit, 1.
docker/dagster.yaml carries the same ``concurrency.pools`` block (tests/test_docker_config.py keeps them equal).
"""

from __future__ import annotations

from pathlib import Path

import yaml

GPU_POOL = "gpu"
TEACHER_POOL = "teacher"
# op granularity: a run waiting for the pool holds no step slot, only its place in the pool's queue
POOLS = {"default_limit": 1, "granularity": "op"}
LOCAL_INSTANCE_CONFIG = {"telemetry": {"enabled": False}, "concurrency": {"pools": POOLS}}

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
