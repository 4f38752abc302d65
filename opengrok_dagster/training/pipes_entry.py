"""Dagster Pipes entry point of the fine-tune: ``python -m opengrok_dagster.training.pipes_entry``.

Started by ``resources.TrainingResource`` (a subprocess locally, the same command in a GPU pod with
``PipesK8sClient``). Extras in: ``mask_mode, model_path, checkpoint_dir, table_path, config, device,
precision, gradient_checkpointing, data_versions``, optionally ``kd_targets_path``. Out: progress as Pipes
log lines, then one custom message, ``{"outcome": ...}`` or ``{"error": ...}`` for bad input, which the asset
turns into its result or a ``Failure``. Anything else (a crash, a kill) exits non-zero and the work dir keeps
its checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
from dagster_pipes import open_dagster_pipes
from pydantic import ValidationError

from opengrok_dagster.distill.targets import KDTargetsError
from opengrok_dagster.masks.tokenizer import TokenizerMismatchError
from opengrok_dagster.training.attention import UnknownMaskModeError
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.data import TrainingDataError
from opengrok_dagster.training.device import DeviceUnavailableError, resolve_placement
from opengrok_dagster.training.trainer import LoraTargetError, NonFiniteLossError, TrainingJob, train_lora

# Bad input or settings: the message names the fix, so it is reported rather than dumped as a traceback.
REPORTED_ERRORS = (
    TrainingDataError, TokenizerMismatchError, LoraTargetError, UnknownMaskModeError, ValidationError,
    NonFiniteLossError, DeviceUnavailableError, KDTargetsError,
)


def main() -> None:
    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        try:
            placement = resolve_placement(extras["device"], extras["precision"])
            job = TrainingJob(
                mask_mode=extras["mask_mode"],
                model_path=extras["model_path"],
                checkpoint_dir=Path(extras["checkpoint_dir"]),
                config=TrainingConfig(**extras["config"]),
                placement=placement,
                gradient_checkpointing=bool(extras["gradient_checkpointing"]),
                data_versions=dict(extras["data_versions"]),
            )
            pipes.log.info(f"training mask mode {job.mask_mode} of {job.model_path} on {placement.description}")
            kd_targets = pd.read_parquet(extras["kd_targets_path"]) if extras.get("kd_targets_path") else None
            outcome = train_lora(job, pd.read_parquet(extras["table_path"]), log=pipes.log.info, kd_targets=kd_targets)
        except REPORTED_ERRORS as exc:
            pipes.report_custom_message({"error": f"{type(exc).__name__}: {exc}"})
            return
        pipes.report_custom_message({"outcome": asdict(outcome)})


if __name__ == "__main__":
    main()
