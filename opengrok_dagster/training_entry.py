"""Dagster Pipes entry point of the fine-tune: ``python -m opengrok_dagster.training_entry`` (orchestration layer:
the domain package `training/` stays free of Dagster and its Pipes protocol).

Started by ``resources.TrainingResource`` (a subprocess locally, the same command in a GPU pod with
``PipesK8sClient``); for several GPUs the same module runs under ``torchrun --nproc_per_node N -m`` or
``accelerate launch --num_processes N -m``: every rank trains, rank 0 alone opens the Pipes session, reports
and publishes (the other ranks read the same extras from the Pipes context and stay silent).

Extras in: a ``training.job.TrainingRequest`` (validated here, so a bad value is reported as bad input). Out: progress as Pipes log lines, then one custom
message, ``{"outcome": ...}`` or ``{"error": ...}`` for bad input, which the asset turns into its result
or a ``Failure``. Anything else (a crash, a kill) exits non-zero and the work dir keeps its checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import asdict

import pandas as pd
from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes
from pydantic import ValidationError

from opengrok_dagster.distill.targets import KDTargetsError
from opengrok_dagster.masks.tokenizer import TokenizerMismatchError
from opengrok_dagster.training.attention import UnknownMaskModeError
from opengrok_dagster.training.data import TrainingDataError
from opengrok_dagster.training.device import DeviceUnavailableError, resolve_placement
from opengrok_dagster.training.job import (
    LoraTargetError,
    NonFiniteLossError,
    TrainingOptionUnavailableError,
    TrainingRequest,
)
from opengrok_dagster.training.trainer import train_lora


# Bad input or settings: the message names the fix, so it is reported rather than dumped as a traceback.
REPORTED_ERRORS = (
    TrainingDataError,
    TokenizerMismatchError,
    LoraTargetError,
    UnknownMaskModeError,
    ValidationError,
    NonFiniteLossError,
    DeviceUnavailableError,
    KDTargetsError,
    TrainingOptionUnavailableError,
)


def main() -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        with open_dagster_pipes() as pipes:
            pipes.report_custom_message(train(pipes.extras, pipes.log.info))
    else:
        train(_pipes_extras(), log=lambda _: None)


def train(extras: dict, log) -> dict:
    """Train as ``extras`` (a ``TrainingRequest``) say; the Pipes message: ``{"outcome": ...}`` or ``{"error": ...}``
    for bad input."""
    try:
        request = TrainingRequest.model_validate(extras)
        placement = resolve_placement(request.device, request.precision)
        job = request.job(placement)
        log(f"training mask mode {job.mask_mode} of {job.model_path} on {placement.description}")
        kd_targets = pd.read_parquet(request.kd_targets_path) if request.kd_targets_path else None
        outcome = train_lora(job, pd.read_parquet(request.table_path), log=log, kd_targets=kd_targets)
    except REPORTED_ERRORS as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"outcome": asdict(outcome) if outcome is not None else None}


def _pipes_extras() -> dict:
    """The extras of the Pipes context without opening a message channel (ranks other than 0)."""
    with PipesDefaultContextLoader().load_context(PipesEnvVarParamsLoader().load_context_params()) as context:
        return dict(context["extras"])


if __name__ == "__main__":
    main()
