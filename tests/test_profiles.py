"""Profiles: the cpu-demo profile is exactly today's defaults, the gpu profile a real GPU run, a profile feeds the
defaults of every asset config and resource of the code location, and bad profiles fail in one line."""

import json
import os
import subprocess
import sys

import pytest
import torch

from assets.collection import PromptsConfig
from opengrok_dagster import cli
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.masks.config import MaskConfig
from opengrok_dagster.profiles import ProfileError, active_profile, load_profile, load_run_config, require_devices
from opengrok_dagster.training.config import TrainingConfig
from tests.conftest import REPO_ROOT, mask_table


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.fixture(autouse=True)
def no_profile_in_the_environment(monkeypatch):
    """`opengrok run --profile` sets OPENGROK_PROFILE for the definitions it loads; monkeypatch restores it after."""
    monkeypatch.setenv("OPENGROK_PROFILE", "")  # recorded, so what the CLI sets is undone after the test
    monkeypatch.delenv("OPENGROK_PROFILE")
    active_profile.cache_clear()
    yield
    active_profile.cache_clear()  # the next test module sees the environment's profile, not the last one loaded here


def test_cpu_demo_is_exactly_the_built_in_defaults():
    profile = load_profile("cpu-demo")
    assert (profile.student_model, profile.training_device, profile.training_precision) == (None, "auto", "auto")
    assert profile.op_config("mask_tables") == {"max_length": MaskConfig().max_length}
    built_in = PromptsConfig.__mro__[1].model_fields  # the class as written, under the profile's defaults
    assert profile.op_config("prompts") and all(
        built_in[name].default == value for name, value in profile.op_config("prompts").items()
    )
    training = TrainingConfig().model_dump()
    assert profile.op_config("lora_checkpoint").items() <= training.items()
    evaluation = EvaluationConfig()
    assert all(getattr(evaluation, name) == value for name, value in profile.op_config("eval_report").items())


def test_gpu_profile_is_phi3_in_bf16_at_512_tokens_with_early_stopping_on_full_splits():
    profile = load_profile("gpu")
    assert profile.student_model == "microsoft/Phi-3-mini-4k-instruct"
    assert (profile.training_device, profile.training_precision) == ("cuda", "bf16")
    training = TrainingConfig(**profile.op_config("lora_checkpoint"))
    assert training.max_length == profile.op_config("mask_tables")["max_length"] == 512
    assert training.max_steps == -1 and training.num_epochs >= 1 and training.early_stopping_patience >= 1
    evaluation = profile.op_config("eval_report")
    assert evaluation["classification_examples"] == evaluation["ner_examples"] == evaluation["agreement_examples"] == 0
    assert (evaluation["device"], evaluation["precision"]) == ("cuda", "bf16")


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(
        ProfileError, match=r"^unknown profile 'gpu-large' \(OPENGROK_PROFILE or --profile\): use one of cpu-demo, gpu"
    ) as error:
        load_profile("gpu-large")
    assert "\n" not in str(error.value)


@NO_CUDA
def test_a_profile_asking_for_cuda_on_a_cpu_machine_is_refused_in_one_line(capsys):
    with pytest.raises(
        ProfileError,
        match="asks for training_device: cuda, which this machine does not have: run it on a machine with cuda, or",
    ):
        require_devices(load_profile("gpu"))
    assert cli.main(["run", "--profile", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opengrok: error: profile 'gpu'") and err.count("\n") == 1


def test_mismatched_max_length_is_refused_naming_both(tmp_path, capsys):
    profile = tmp_path / "long-masks.yaml"
    profile.write_text("ops:\n  mask_tables: {config: {max_length: 256}}\n")
    with pytest.raises(
        ProfileError,
        match=r"max_length differs between mask_tables \(256\) and lora_checkpoint \(128\); set both to the",
    ):
        load_profile(str(profile))
    run_config = tmp_path / "run.yaml"
    run_config.write_text("ops:\n  lora_checkpoint: {config: {max_length: 64}}\n")
    assert cli.main(["run", "--profile", "cpu-demo", "--config", str(run_config)]) == 2
    err = capsys.readouterr().err
    assert "max_length differs between mask_tables (128) and lora_checkpoint (64)" in err and err.count("\n") == 1


def test_a_run_config_file_reads_only_asset_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("resources: {teacher: {config: {model: x}}}\n")
    with pytest.raises(ProfileError, match="only ops: is read"):
        load_run_config(path)
    path.write_text("ops:\n  eval_report: {config: {classification_examples: 50}}\n")
    assert load_run_config(path)["ops"]["eval_report"]["config"]["classification_examples"] == 50


def test_the_profile_is_the_default_config_of_every_asset_and_resource(tmp_path):
    """What the launchpad, schedules, sensors and declarative automation start with: the assets' config defaults."""
    profile = tmp_path / "small.yaml"
    profile.write_text(
        "description: test\nstudent_model: /models/student\ntraining_device: cpu\n"
        "ops:\n  mask_tables: {config: {max_length: 96}}\n"
        "  lora_checkpoint: {config: {max_length: 96, max_steps: 3}}\n"
        "  eval_report: {config: {classification_examples: 7, device: cpu}}\n"
    )
    probe = (
        "import json; from opengrok_dagster.definitions import defs\n"
        "fields = lambda asset: defs.get_assets_def(asset).op.config_schema.config_type.fields\n"
        "default = lambda asset, field: fields(asset)[field].default_value\n"
        "print(json.dumps({'masks': default('mask_tables', 'max_length'),\n"
        "  'steps': default('lora_checkpoint', 'max_steps'), 'length': default('lora_checkpoint', 'max_length'),\n"
        "  'items': default('eval_report', 'classification_examples'), 'device': default('eval_report', 'device'),\n"
        "  'student': defs.resources['student'].model, 'training': defs.resources['training'].device}))\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENGROK_STUDENT_MODEL", "OPENGROK_TRAINING_DEVICE")
    }
    env |= {"OPENGROK_PROFILE": str(profile), "OPENGROK_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "masks": 96,
        "steps": 3,
        "length": 96,
        "items": 7,
        "device": "cpu",
        "student": "/models/student",
        "training": "cpu",
    }


def test_a_profile_value_of_the_wrong_type_names_the_field(tmp_path):
    from assets.training import LoraCheckpointConfig
    from opengrok_dagster.profiles import with_profile_defaults

    path = tmp_path / "bad.yaml"
    path.write_text("ops:\n  lora_checkpoint: {config: {max_steps: many, max_stepz: 3}}\n")
    with pytest.raises(ProfileError, match=r"ops.lora_checkpoint.config has no field\(s\) max_stepz"):
        with_profile_defaults("lora_checkpoint", load_profile(str(path)))(LoraCheckpointConfig)
    path.write_text("ops:\n  lora_checkpoint: {config: {max_steps: many}}\n")
    with pytest.raises(ProfileError, match="ops.lora_checkpoint.config: max_steps: Input should be a valid integer"):
        with_profile_defaults("lora_checkpoint", load_profile(str(path)))(LoraCheckpointConfig)


def test_a_fine_tune_on_mask_tables_cut_at_another_max_length_fails_before_training(
    tmp_path,
    tiny_student,
    tokenizer,
):
    from tests.test_training_asset import run_checkpoint

    result = run_checkpoint(tmp_path, mask_table(tokenizer).assign(max_length=64), tiny_student)  # QUICK trains at 48
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert (
        "lora_checkpoint[hard]: max_length differs between mask_tables (64) and lora_checkpoint (48); set both to the "
        "same value"
    ) in str(failure.event_specific_data.error)
    assert "re-materialise mask_tables with max_length 48" in str(failure.event_specific_data.error)
    assert not (tmp_path / "checkpoints" / "hard").exists()


def test_a_run_config_file_for_no_asset_or_with_a_misspelt_field_is_refused_before_any_work(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    path = tmp_path / "run.yaml"
    path.write_text("ops:\n  lora_checkpont: {config: {max_steps: 3}}\n")
    assert cli.main(["run", "--config", str(path)]) == 2
    assert "no asset named lora_checkpont; configurable assets: " in capsys.readouterr().err
    path.write_text("ops:\n  lora_checkpoint: {config: {max_stepz: 3}}\n")
    assert cli.main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert 'Received unexpected config entry "max_stepz" at path root:ops:lora_checkpoint:config; fix the file' in err
    assert err.count("\n") == 1 and not (tmp_path / "dagster_home").exists()
