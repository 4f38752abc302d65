"""A code location for tests/test_gpu_pool.py: two stand-in fine-tunes in the project's gpu pool.

``prepare`` waits until the other partition's run has started too (a barrier through files), so the two runs are
provably in progress together; ``fine_tune`` then records when it held the GPU. Only the pool can keep the two
``fine_tune`` windows apart. They stand in for lora_checkpoint, which declares the same pool
(tests/test_docker_config.py), because real fine-tunes would cost minutes here for the same proof.
"""

import os
import time
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    Definitions,
    StaticPartitionsDefinition,
    asset,
    define_asset_job,
    in_process_executor,
)

from opengrok_dagster.instance import GPU_POOL


MODES = StaticPartitionsDefinition(["none", "hard"])


def windows() -> Path:
    """Where the steps record what they did: set by the test, read when a step runs."""
    return Path(os.environ["OPENGROK_POOL_TEST_DIR"])


@asset(partitions_def=MODES)
def prepare(context: AssetExecutionContext) -> None:
    (windows() / f"prepare-{context.partition_key}").touch()
    deadline = time.monotonic() + 180
    while len(list(windows().glob("prepare-*"))) < len(MODES.get_partition_keys()):
        if time.monotonic() > deadline:
            raise RuntimeError("the other run never started: the two runs were not in progress together")
        time.sleep(0.2)


@asset(partitions_def=MODES, pool=GPU_POOL, deps=[prepare])
def fine_tune(context: AssetExecutionContext) -> None:
    started = time.time()
    (windows() / f"holding-{context.partition_key}").touch()
    time.sleep(float(os.environ.get("OPENGROK_POOL_TEST_HOLD_S", "3")))  # how long a fine-tune holds the GPU
    (windows() / f"fine_tune-{context.partition_key}").write_text(f"{started} {time.time()}")


fine_tune_job = define_asset_job(
    "fine_tune_job", selection=[prepare, fine_tune], partitions_def=MODES, executor_def=in_process_executor
)
gpu_step_job = define_asset_job("gpu_step_job", selection=[fine_tune], partitions_def=MODES)

defs = Definitions(assets=[prepare, fine_tune], jobs=[fine_tune_job, gpu_step_job])
