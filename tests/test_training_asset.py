"""The lora_checkpoint asset end to end: Dagster run -> Pipes subprocess -> published adapter and manifest."""

import json

import pandas as pd
import pytest
import torch
from dagster import asset, materialize
from huggingface_hub import ModelCard

from assets import training as training_asset
from assets.training import lora_checkpoint
from resources import HubResource, OpenGrokPaths, ParquetIOManager, StudentResource, TrainingResource
from tests.conftest import QUICK, mask_table


CONTRACT_COLUMNS = [
    "mask_mode",
    "adapter_dir",
    "base_model",
    "best_val_loss",
    "global_step",
    "early_stopped",
    "train_examples",
    "validation_examples",
    "tokens_per_second",
    "mask_options",  # what the adapter was trained with: the mask table's options, as JSON
    "checkpoint_selection",
]


def run_checkpoint(
    tmp_path, table, model_path, mode="hard", device="cpu", instance=None, hub=None, processes=1, **config
):
    @asset(name="mask_tables")
    def upstream_mask_tables() -> pd.DataFrame:
        return table

    resources = {
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(tmp_path / "topics.yaml")),
        "student": StudentResource(model=model_path),
        "training": TrainingResource(device=device, processes=processes),
        "hub": hub or HubResource(),
    }
    assert materialize([upstream_mask_tables], resources=resources, instance=instance).success
    return materialize(
        [upstream_mask_tables, lora_checkpoint],
        selection=[lora_checkpoint],
        partition_key=mode,
        resources=resources,
        instance=instance,
        run_config={"ops": {"lora_checkpoint": {"config": QUICK | config}}},
        raise_on_error=False,
    )


def test_materialises_adapter_manifest_and_metadata(tmp_path, tiny_student, tokenizer, instance):
    result = run_checkpoint(tmp_path, mask_table(tokenizer), tiny_student, instance=instance)
    assert result.success
    manifest = pd.read_parquet(tmp_path / "assets" / "lora_checkpoint" / "hard.parquet")
    assert list(manifest.columns) == CONTRACT_COLUMNS and len(manifest) == 1
    row = manifest.iloc[0]
    assert (
        row["mask_mode"] == "hard"
        and row["adapter_dir"] == str(tmp_path / "checkpoints" / "hard")
        and row["global_step"] == 4
    )
    record = json.loads((tmp_path / "checkpoints" / "hard" / "opengrok_checkpoint.json").read_text())
    assert set(record["data_versions"]) == {"mask_tables"}
    assert json.loads(row["mask_options"]) == record["mask_options"]  # the table's mask_config ({} without one)
    assert row["checkpoint_selection"] == record["checkpoint_selection"] == "unmasked"
    metadata = result.asset_materializations_for_node("lora_checkpoint")[0].metadata
    assert metadata["loss_plot"].value.startswith("![train and validation loss](data:image/png;base64,")
    assert {"best_val_loss", "tokens_per_second", "peak_memory_mb", "early_stopped", "global_step"} <= set(metadata)
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("finite_validation_loss", True)]
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("step 4/4: {'eval_loss'" in message for message in logs), "the Trainer's losses stream into the run log"
    card = ModelCard.load(tmp_path / "checkpoints" / "hard" / "README.md").data
    assert (card.library_name, card.pipeline_tag, card.base_model) == ("peft", "text-generation", None)  # a local base
    readme = (tmp_path / "checkpoints" / "hard" / "README.md").read_text()
    assert str(tmp_path) not in readme, "no local path in the card"
    assert metadata["hub_repo"].value == "not pushed"


@pytest.mark.parametrize(
    ("push_to_hub", "token", "message"),
    [
        ("me/opengrok-{mask_mode}", None, "push_to_hub to me/opengrok-paper needs a Hugging Face write token: set"),
        ("opengrok-{mask_mode}", "hf_test", "gives 'opengrok-paper', not a hub repo id: write it as '<user or org>/"),
        ("me/{mode}", "hf_test", "the only placeholder allowed is {mask_mode}"),
    ],
)
def test_push_to_hub_that_cannot_happen_is_refused_before_training(
    tmp_path, tiny_student, tokenizer, push_to_hub, token, message
):
    table = mask_table(tokenizer)
    hub = HubResource(token=token)
    result = run_checkpoint(tmp_path, table, tiny_student, mode="paper", hub=hub, push_to_hub=push_to_hub)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert message in str(failure.event_specific_data.error)
    checkpoints = tmp_path / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), "nothing was trained"


def test_unchanged_data_and_config_reuse_the_published_checkpoint(tmp_path, tiny_student, tokenizer, instance):
    table = mask_table(tokenizer)
    assert run_checkpoint(tmp_path, table, tiny_student, instance=instance).success
    adapter = tmp_path / "checkpoints" / "hard" / "adapter_model.safetensors"
    trained_at = adapter.stat().st_mtime_ns
    again = run_checkpoint(tmp_path, table, tiny_student, instance=instance)
    assert again.success and adapter.stat().st_mtime_ns == trained_at
    assert (
        again.asset_materializations_for_node("lora_checkpoint")[0].metadata["reused_published_checkpoint"].value
        is True
    )
    changed = run_checkpoint(tmp_path, table, tiny_student, instance=instance, seed=7)
    assert changed.success and adapter.stat().st_mtime_ns != trained_at
    assert (
        changed.asset_materializations_for_node("lora_checkpoint")[0].metadata["reused_published_checkpoint"].value
        is False
    )


def test_a_change_to_the_training_code_retrains(tmp_path, tiny_student, tokenizer, instance, monkeypatch):
    """The run key includes the asset's code version: after a fix to the trainer the adapter is not reused."""
    table = mask_table(tokenizer)
    assert run_checkpoint(tmp_path, table, tiny_student, instance=instance).success
    record = tmp_path / "checkpoints" / "hard" / "opengrok_checkpoint.json"
    assert json.loads(record.read_text())["code_version"] == training_asset.TRAINING_CODE_VERSION
    monkeypatch.setattr(training_asset, "TRAINING_CODE_VERSION", "fixed-trainer")
    again = run_checkpoint(tmp_path, table, tiny_student, instance=instance)
    metadata = again.asset_materializations_for_node("lora_checkpoint")[0].metadata
    assert again.success and metadata["reused_published_checkpoint"].value is False
    assert json.loads(record.read_text())["code_version"] == "fixed-trainer"


def test_bad_input_fails_with_the_fix_and_publishes_nothing(tmp_path, tiny_student, tokenizer):
    table = mask_table(tokenizer).assign(tokenizer_fingerprint="Phi-3-mini@0000")
    result = run_checkpoint(tmp_path, table, tiny_student, mode="soft")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "re-materialise mask_tables" in str(failure.event_specific_data.error)
    assert not (tmp_path / "checkpoints" / "soft").exists()


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_absent_device_fails_before_training(tmp_path, tiny_student, tokenizer, device):
    import torch

    if (device == "cuda" and torch.cuda.is_available()) or (device == "mps" and torch.backends.mps.is_available()):
        pytest.skip(f"{device} is present here")
    result = run_checkpoint(tmp_path, mask_table(tokenizer), tiny_student, device=device)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"training device {device!r} is not available" in str(failure.event_specific_data.error)


def test_a_training_subprocess_that_dies_fails_the_step_with_how_to_resume(tmp_path, tokenizer):
    """A crash (here: no model at the student path, which the entry point does not report as bad input) is
    translated by the training resource into a Failure that says nothing was published and how to resume."""
    result = run_checkpoint(tmp_path, mask_table(tokenizer), str(tmp_path / "no-such-model"), mode="paper")
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "the training subprocess for paper died (the training subprocess exited with code 1)" in message
    assert "re-materialise to resume" in message and not (tmp_path / "checkpoints" / "paper").exists()


@pytest.mark.integration
def test_two_gloo_processes_train_the_adapter_of_one_process(tmp_path, tiny_student, tokenizer, instance):
    """torchrun, 2 CPU ranks x batch 2 = one process x batch 4: same adapter; rank 0 alone reports and publishes."""
    from safetensors.torch import load_file

    table = mask_table(tokenizer)
    adapters = {}
    for processes, batch in ((1, 4), (2, 2)):
        home = tmp_path / f"processes-{processes}"
        result = run_checkpoint(
            home, table, tiny_student, instance=instance, processes=processes, batch_size=batch, lora_dropout=0.0
        )
        assert result.success
        adapters[processes] = load_file(str(home / "checkpoints" / "hard" / "adapter_model.safetensors"))
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
        assert sum("published" in message for message in logs) == 1
        assert any("data-parallel over 2 processes (gloo)" in message for message in logs) == (processes == 2)
        assert sum(message.startswith("step 4/4: {'eval_loss'") for message in logs) == 1
    for name, weight in adapters[1].items():
        torch.testing.assert_close(adapters[2][name], weight, rtol=1e-4, atol=1e-5)


def test_several_processes_launch_the_entry_point_under_torchrun():
    assert TrainingResource().command()[1:] == ["-m", "opengrok_dagster.training_entry"]
    assert TrainingResource(processes=4).command()[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "opengrok_dagster.training_entry",
    ]
