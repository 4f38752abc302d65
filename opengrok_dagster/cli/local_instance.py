"""The project's persistent Dagster instance as the `opengrok` commands open it."""

from __future__ import annotations

import fcntl
import os
import time

from dagster import DagsterInstance

from opengrok_dagster.instance import set_missing_pool_limits, write_local_instance_config
from opengrok_dagster.settings import dagster_home


INSTANCE_LOCK_TIMEOUT_S = 300.0


def open_instance() -> DagsterInstance:
    """The project's persistent Dagster instance (DAGSTER_HOME, default $OPENGROK_HOME/dagster_home), with the
    gpu and teacher pools (instance.py) limited before any run starts; `make dev` opens the same one.

    Creating it is serialised by a file lock: SQLite storages created by two processes at once each stamp
    their own alembic revision, and every later run fails with "more than one head present". Under the lock
    the instance is opened and each storage touched once, so that all of them exist before the lock is let go.
    """
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    with open(home / ".opengrok-instance.lock", "w") as lock:
        deadline = time.monotonic() + INSTANCE_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ValueError(
                        f"another opengrok process has held {lock.name} for {INSTANCE_LOCK_TIMEOUT_S:.0f}s "
                        "while opening the Dagster instance; wait for it to finish and retry"
                    ) from None
                time.sleep(0.1)
        write_local_instance_config(home)  # local SQLite storage, the pools; no telemetry from an offline pipeline
        instance = DagsterInstance.get()
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions("topics")
        instance.all_instigator_state()
        set_missing_pool_limits(instance)  # before any run asks for a pool: two runs asking first race (instance.py)
        return instance  # closing the file releases the lock
