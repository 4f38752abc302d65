"""Masked-attention LoRA fine-tune: one checkpoint per attention-mask mode, trained out of process via Pipes."""

import math
import tempfile
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from dagster._core.errors import DagsterPipesExecutionError  # raised by Pipes clients, not exported publicly

from assets.metadata import png_markdown
from assets.versioning import content_data_version
from opengrok_dagster.automation import FOLLOWS_UPSTREAM_DATA
from opengrok_dagster.partitions import mask_mode_partitions
from opengrok_dagster.training.config import TrainingConfig
from resources import OpenGrokPaths, StudentResource, TrainingResource


class LoraCheckpointConfig(Config, TrainingConfig):
    """Fine-tune hyper-parameters; every field and its description comes from ``TrainingConfig``."""


def _loss_table(curves: dict) -> str:
    validation = dict((int(step), loss) for step, loss in curves["validation"])
    lines = ["| step | train loss | validation loss |", "|---:|---:|---:|"]
    for step, loss in curves["train"]:
        lines.append(f"| {int(step)} | {loss:.4f} | {validation.pop(int(step), float('nan')):.4f} |")
    lines += [f"| {step} | | {loss:.4f} |" for step, loss in sorted(validation.items())]
    return "\n".join(lines)


def _kd_targets_extras(paths: OpenGrokPaths, data_versions: dict) -> dict:
    """The published kd_targets file for the training subprocess, its data version recorded with the others."""
    path = paths.home_dir / "assets" / "kd_targets.parquet"
    if not path.exists():
        raise Failure(description=f"lora_checkpoint: kd_alpha > 0 but {path} does not exist; materialise kd_targets "
                      "(job prepare_training_data) from responses collected with logprobs, or set kd_alpha to 0")
    data_versions["kd_targets"] = content_data_version(pd.read_parquet(path)).value
    return {"kd_targets_path": str(path)}


@asset(
    deps=["kd_targets"],  # read from its Parquet file only when kd_alpha > 0 (distillation is opt-in)
    partitions_def=mask_mode_partitions,
    group_name="training",
    automation_condition=FOLLOWS_UPSTREAM_DATA,
    code_version="1",
    kinds={"pytorch", "python"},
    check_specs=[
        AssetCheckSpec(
            "finite_validation_loss", asset="lora_checkpoint", blocking=True,
            description="The best validation loss is a finite number: a diverged adapter must not reach the evaluation.",
        )
    ],
)
def lora_checkpoint(
    context: AssetExecutionContext,
    config: LoraCheckpointConfig,
    mask_tables: pd.DataFrame,
    paths: OpenGrokPaths,
    student: StudentResource,
    training: TrainingResource,
):
    """LoRA adapter of the student fine-tuned on the teacher's responses with one attention-mask mode.

    Publishes ``$OPENGROK_HOME/checkpoints/<mode>/`` (peft adapter, tokenizer, training arguments, loss
    curves, model card, ``opengrok_checkpoint.json``) and returns its one-row manifest.
    """
    mode = context.partition_key
    placement = training.check_placement()
    checkpoint_dir = paths.home_dir / "checkpoints" / mode
    checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
    model_path = student.model_path()  # verifies the offline checkpoint's hashes: ~0.5 GB read, so once
    context.log.info(f"fine-tuning {model_path} with mask mode {mode} on {placement}")
    with tempfile.TemporaryDirectory(dir=checkpoint_dir.parent, prefix=f".input-{mode}-") as scratch:
        table_path = Path(scratch) / "mask_tables.parquet"
        mask_tables.to_parquet(table_path, index=False)
        extras = {
            "mask_mode": mode,
            "model_path": model_path,
            "checkpoint_dir": str(checkpoint_dir),
            "table_path": str(table_path),
            "config": TrainingConfig(**config.model_dump()).model_dump(),
            "data_versions": {"mask_tables": content_data_version(mask_tables).value},
        }
        if config.kd_alpha:
            extras.update(_kd_targets_extras(paths, extras["data_versions"]))
        try:
            messages = training.run_training(context, extras).get_custom_messages()
        except DagsterPipesExecutionError as exc:
            raise Failure(
                description=f"the training subprocess for {mode} died ({exc}); nothing was published, and its checkpoints "
                f"in {checkpoint_dir.with_name('.work-' + mode)} are kept: re-materialise to resume"
            ) from None
    errors = [message["error"] for message in messages if "error" in message]
    outcomes = [message["outcome"] for message in messages if "outcome" in message]
    if errors or not outcomes:
        reason = errors[0] if errors else "the training subprocess reported no outcome"
        raise Failure(description=f"lora_checkpoint[{mode}] was not trained, nothing was published: {reason}")
    outcome = outcomes[0]
    manifest = pd.DataFrame([{key: outcome[key] for key in (
        "mask_mode", "adapter_dir", "base_model", "best_val_loss", "global_step", "early_stopped",
        "train_examples", "validation_examples", "tokens_per_second",
    )}])
    curves = outcome["curves"]
    yield Output(
        manifest,
        metadata={
            "dagster/row_count": 1,
            "adapter_dir": MetadataValue.path(outcome["adapter_dir"]),
            "base_model": outcome["base_model"],
            "best_val_loss": outcome["best_val_loss"],
            "best_step": outcome["best_step"],
            "global_step": outcome["global_step"],
            "early_stopped": outcome["early_stopped"],
            "early_stop_step": outcome["global_step"] if outcome["early_stopped"] else None,
            "resumed_from_step": outcome["resumed_from_step"],
            "reused_published_checkpoint": outcome["reused"],
            "train_examples": outcome["train_examples"],
            "validation_examples": outcome["validation_examples"],
            "dropped_examples": outcome["dropped_examples"],
            "tokens_per_second": outcome["tokens_per_second"],
            "peak_memory_mb": round(outcome["peak_memory_bytes"] / 2**20, 1),
            "device": outcome["device"],
            "lora_targets": ", ".join(outcome["lora_targets"]),
            "sample_generation": outcome["sample_generation"],
            "loss_plot": png_markdown((Path(outcome["adapter_dir"]) / "loss_curves.png").read_bytes(), "train and validation loss"),
            "losses": MetadataValue.md(_loss_table(curves)),
        },
    )
    finite = math.isfinite(outcome["best_val_loss"])
    yield AssetCheckResult(
        check_name="finite_validation_loss",
        passed=finite,
        metadata={"best_val_loss": outcome["best_val_loss"]},
        description=None if finite else "validation loss diverged: lower learning_rate or use fp32, then re-materialise",
    )
