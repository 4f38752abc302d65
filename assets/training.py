"""Masked-attention LoRA fine-tune: one checkpoint per attention-mask mode, trained out of process via Pipes."""

import math
import tempfile
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from assets.config import config_from
from assets.metadata import png_markdown
from assets.versioning import asset_code_version, content_data_version
from opengrok_dagster.automation import FOLLOWS_UPSTREAM_DATA
from opengrok_dagster.instance import GPU_POOL
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.partitions import mask_mode_partitions
from opengrok_dagster.profiles import LORA_CHECKPOINT, ProfileError, require_matching_max_length, with_profile_defaults
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.hub import HubPushError, hub_repo_id, push_adapter, require_token
from opengrok_dagster.training.job import TrainingRequest
from opengrok_dagster.training.manifest import manifest_frame
from resources import HubResource, OpenGrokPaths, StudentResource, TrainingResource
from resources.gpu import TrainingProcessError
from resources.hub import HUB_TOKEN_VARIABLE


# Computed once: the asset's code version, and part of the training run key (a code change retrains).
TRAINING_CODE_VERSION = asset_code_version("lora_checkpoint")


@with_profile_defaults(
    LORA_CHECKPOINT
)  # opengrok_dagster/config/profiles/: steps, epochs and max_length of the deployment
class LoraCheckpointConfig(config_from(TrainingConfig)):
    """Fine-tune hyper-parameters (every field and its description from ``TrainingConfig``), and where to upload."""

    push_to_hub: str | None = Field(
        default=None,
        description="Hub repo id to upload the published adapter to, {mask_mode} replaced by the partition (e.g. "
        "'me/smollm2-opengrok-{mask_mode}'); needs a write token in HF_TOKEN. Unset = no upload. Re-materialise after "
        "eval_report to upload the card with its scores (training is reused).",
    )


def _loss_table(curves: dict) -> str:
    validation = {int(step): loss for step, loss in curves["validation"]}
    lines = ["| step | train loss | validation loss |", "|---:|---:|---:|"]
    for step, loss in curves["train"]:
        lines.append(f"| {int(step)} | {loss:.4f} | {validation.pop(int(step), float('nan')):.4f} |")
    lines += [f"| {step} | | {loss:.4f} |" for step, loss in sorted(validation.items())]
    return "\n".join(lines)


def _push_target(config: LoraCheckpointConfig, mode: str, hub: HubResource) -> tuple[str, str] | None:
    """The repo id and token of the configured upload, or None; refuses one that cannot happen."""
    if not config.push_to_hub:
        return None
    try:
        repo_id = hub_repo_id(config.push_to_hub, mode)
        return repo_id, require_token(hub.token, repo_id, HUB_TOKEN_VARIABLE)
    except HubPushError as exc:
        raise Failure(description=f"lora_checkpoint[{mode}]: {exc}") from None


def _push(context: AssetExecutionContext, adapter_dir: Path, target: tuple[str, str], private: bool) -> str:
    try:
        url = push_adapter(adapter_dir, *target, private)
    except HubPushError as exc:
        raise Failure(
            description=f"lora_checkpoint is published at {adapter_dir} but {exc}; re-materialise to retry "
            "(the training is reused)"
        ) from None
    context.log.info(f"pushed {adapter_dir} to {url}")
    return url


def _kd_targets_fields(layout: HomeLayout, data_versions: dict) -> dict:
    """The published kd_targets file for the training subprocess, its data version recorded with the others."""
    path = layout.asset_path("kd_targets")
    if not path.exists():
        raise Failure(
            description=f"lora_checkpoint: kd_alpha > 0 but {path} does not exist; materialise kd_targets "
            "(job prepare_training_data) from responses collected with logprobs, or set kd_alpha to 0"
        )
    data_versions["kd_targets"] = content_data_version(pd.read_parquet(path)).value
    return {"kd_targets_path": str(path)}


@asset(
    deps=["kd_targets"],  # read from its Parquet file only when kd_alpha > 0 (distillation is opt-in)
    partitions_def=mask_mode_partitions,
    group_name="training",
    pool=GPU_POOL,  # one fine-tune or evaluation on the GPU at a time, across all runs (instance.py)
    automation_condition=FOLLOWS_UPSTREAM_DATA,
    code_version=TRAINING_CODE_VERSION,
    kinds={"pytorch", "python"},
    check_specs=[
        AssetCheckSpec(
            "finite_validation_loss",
            asset="lora_checkpoint",
            blocking=True,
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
    hub: HubResource,
):
    """LoRA adapter of the student fine-tuned on the teacher's responses with one attention-mask mode.

    Publishes ``$OPENGROK_HOME/checkpoints/<mode>/`` (peft adapter, tokenizer, training arguments, loss
    curves, model card, ``opengrok_checkpoint.json``) and returns its one-row manifest.
    """
    mode = context.partition_key
    training_config = config.domain_config()  # the run key hashes these settings, not where the adapter is pushed
    try:
        if len(mask_tables) and "max_length" in mask_tables.columns:  # the cut the table was built with
            built_with = {"max_length": int(mask_tables["max_length"].iloc[0])}
            require_matching_max_length(built_with, {"max_length": config.max_length}, f"lora_checkpoint[{mode}]")
    except ProfileError as exc:
        fix = f"or re-materialise mask_tables with max_length {config.max_length}"
        raise Failure(description=f"{exc}; {fix}") from None
    placement = training.check_placement()
    push_target = _push_target(config, mode, hub)  # before training: a push that cannot happen costs no fine-tune
    model_path = student.model_path()  # verifies the offline checkpoint's hashes: ~0.5 GB read, so once
    context.log.info(f"fine-tuning {model_path} with mask mode {mode} on {placement}")
    messages = _train_out_of_process(context, training_config, mask_tables, paths.layout, model_path, training)
    outcome = _reported_outcome(mode, messages)
    hub_url = _push(context, Path(outcome["adapter_dir"]), push_target, hub.private) if push_target else None
    yield Output(manifest_frame(outcome), metadata=_metadata(outcome, hub_url))
    finite = math.isfinite(outcome["best_val_loss"])
    yield AssetCheckResult(
        check_name="finite_validation_loss",
        passed=finite,
        metadata={"best_val_loss": outcome["best_val_loss"]},
        description=None
        if finite
        else "validation loss diverged: lower learning_rate or use fp32, then re-materialise",
    )


def _train_out_of_process(
    context: AssetExecutionContext,
    training_config: TrainingConfig,
    mask_tables: pd.DataFrame,
    layout: HomeLayout,
    model_path: str,
    training: TrainingResource,
) -> list[dict]:
    """Hand the mask table to the Pipes training subprocess through a scratch file; its custom messages."""
    mode = context.partition_key
    layout.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=layout.checkpoints_dir, prefix=f".input-{mode}-") as scratch:
        table_path = Path(scratch) / "mask_tables.parquet"
        mask_tables.to_parquet(table_path, index=False)
        data_versions = {"mask_tables": content_data_version(mask_tables).value}
        kd_fields = _kd_targets_fields(layout, data_versions) if training_config.kd_alpha else {}
        request = TrainingRequest(
            mask_mode=mode,
            model_path=model_path,
            checkpoint_dir=str(layout.checkpoint_dir(mode)),
            table_path=str(table_path),
            config=training_config,
            data_versions=data_versions,
            code_version=TRAINING_CODE_VERSION,
            **kd_fields,
        )
        try:
            return training.run_training(context, request).get_custom_messages()
        except TrainingProcessError as exc:
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


def _metadata(outcome: dict, hub_url: str | None) -> dict:
    return {
        "dagster/row_count": 1,
        "adapter_dir": MetadataValue.path(outcome["adapter_dir"]),
        **{
            key: outcome[key]
            for key in (
                "base_model",
                "best_val_loss",
                "best_step",
                "global_step",
                "early_stopped",
                "resumed_from_step",
                "train_examples",
                "validation_examples",
                "dropped_examples",
                "tokens_per_second",
                "device",
                "sample_generation",
            )
        },
        "early_stop_step": outcome["global_step"] if outcome["early_stopped"] else None,
        "reused_published_checkpoint": outcome["reused"],
        "peak_memory_mb": round(outcome["peak_memory_bytes"] / 2**20, 1),
        "lora_targets": ", ".join(outcome["lora_targets"]),
        "loss_plot": png_markdown(
            (Path(outcome["adapter_dir"]) / "loss_curves.png").read_bytes(), "train and validation loss"
        ),
        "losses": MetadataValue.md(_loss_table(outcome["curves"])),
        "hub_repo": MetadataValue.url(hub_url) if hub_url else "not pushed",
    }
