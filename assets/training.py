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
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.partitions import mask_mode_partitions
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.manifest import manifest_frame
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


@asset(
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
    model_path = student.model_path()  # verifies the offline checkpoint's hashes: ~0.5 GB read, so once
    context.log.info(f"fine-tuning {model_path} with mask mode {mode} on {placement}")
    messages = _train_out_of_process(context, config, mask_tables, paths.layout, model_path, training)
    outcome = _reported_outcome(mode, messages)
    yield Output(manifest_frame(outcome), metadata=_metadata(outcome))

    finite = math.isfinite(outcome["best_val_loss"])
    yield AssetCheckResult(
        check_name="finite_validation_loss",
        passed=finite,
        metadata={"best_val_loss": outcome["best_val_loss"]},
        description=None if finite else "validation loss diverged: lower learning_rate or use fp32, then re-materialise",
    )


def _train_out_of_process(
    context: AssetExecutionContext, config: LoraCheckpointConfig, mask_tables: pd.DataFrame, layout: HomeLayout,
    model_path: str, training: TrainingResource,
) -> list[dict]:
    """Hand the mask table to the Pipes training subprocess through a scratch file; its custom messages."""
    mode = context.partition_key
    layout.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=layout.checkpoints_dir, prefix=f".input-{mode}-") as scratch:
        table_path = Path(scratch) / "mask_tables.parquet"
        mask_tables.to_parquet(table_path, index=False)
        extras = {
            "mask_mode": mode,
            "model_path": model_path,
            "checkpoint_dir": str(layout.checkpoint_dir(mode)),
            "table_path": str(table_path),
            "config": TrainingConfig(**config.model_dump()).model_dump(),
            "data_versions": {"mask_tables": content_data_version(mask_tables).value},
        }
        try:
            return training.run_training(context, extras).get_custom_messages()
        except DagsterPipesExecutionError as exc:
            raise Failure(
                description=f"the training subprocess for {mode} died ({exc}); nothing was published, and its "
                f"checkpoints in {layout.training_work_dir(mode)} are kept: re-materialise to resume"
            ) from None


def _reported_outcome(mode: str, messages: list[dict]) -> dict:
    """The subprocess's outcome, or a Failure with the bad-input error it reported instead."""
    errors = [message["error"] for message in messages if "error" in message]
    outcomes = [message["outcome"] for message in messages if "outcome" in message]
    if errors or not outcomes:
        reason = errors[0] if errors else "the training subprocess reported no outcome"
        raise Failure(description=f"lora_checkpoint[{mode}] was not trained, nothing was published: {reason}")
    return outcomes[0]


def _metadata(outcome: dict) -> dict:
    return {
        "dagster/row_count": 1,
        "adapter_dir": MetadataValue.path(outcome["adapter_dir"]),
        **{key: outcome[key] for key in (
            "base_model", "best_val_loss", "best_step", "global_step", "early_stopped", "resumed_from_step",
            "train_examples", "validation_examples", "dropped_examples", "tokens_per_second", "device",
            "sample_generation",
        )},
        "early_stop_step": outcome["global_step"] if outcome["early_stopped"] else None,
        "reused_published_checkpoint": outcome["reused"],
        "peak_memory_mb": round(outcome["peak_memory_bytes"] / 2**20, 1),
        "lora_targets": ", ".join(outcome["lora_targets"]),
        "loss_plot": png_markdown(
            (Path(outcome["adapter_dir"]) / "loss_curves.png").read_bytes(), "train and validation loss"
        ),
        "losses": MetadataValue.md(_loss_table(outcome["curves"])),
    }
