import json

import pytest

from opengrok_dagster.offline_model import PROVENANCE_FILE, OfflineModelError, _sha256, check_offline_model


def test_missing_model_error_names_the_provisioning_command(tmp_path):
    with pytest.raises(OfflineModelError, match="opengrok provision --cache-dir") as error:
        check_offline_model(tmp_path / "models" / "SmolLM2-135M-Instruct")
    assert "not provisioned" in str(error.value)


def test_corrupt_file_is_detected_by_its_recorded_hash(tmp_path):
    model_dir = tmp_path / "models" / "SmolLM2-135M-Instruct"
    model_dir.mkdir(parents=True)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"weights")
    (model_dir / PROVENANCE_FILE).write_text(json.dumps({"files": {"model.safetensors": _sha256(weights)}}))
    assert check_offline_model(model_dir) == model_dir
    weights.write_bytes(b"weightz")
    with pytest.raises(OfflineModelError, match="model.safetensors is missing or corrupt; run `opengrok provision"):
        check_offline_model(model_dir)


def test_unreadable_provenance_is_reported(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / PROVENANCE_FILE).write_text("{")
    with pytest.raises(OfflineModelError, match="unreadable"):
        check_offline_model(model_dir)


def test_provisioned_model_is_complete_fp32_without_gguf_quantizer(offline_model):
    config = json.loads((offline_model / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert (offline_model / "model.safetensors").stat().st_size > 400_000_000  # fp32, not the 98 MB Q4_1 GGUF
