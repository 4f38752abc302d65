"""The promoted student as a plain transformers model, and serving it on the embedded teacher's machinery.

``export_merged`` folds the promoted LoRA adapter into its base (peft ``merge_and_unload``) and publishes the
merged weights as safetensors with the tokenizer and a model card, so ``AutoModelForCausalLM.from_pretrained``
loads it without peft. ``serve_export`` runs it behind the same OpenAI-compatible server as the embedded
teacher (``transformers serve``, ``offline.server.TeacherServer``): any client of the teacher then works
against the student by changing ``base_url``.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pandas as pd

from opengrok_dagster.evaluation.local import model_identity
from opengrok_dagster.offline.server import TeacherServer
from opengrok_dagster.publish import partial_path, publish_directory


EXPORT_RECORD = "opengrok_export.json"


class ExportError(ValueError):
    """Nothing to export or serve: no promoted student, no export, a port in use."""


def promoted_adapter(record_path: Path) -> dict:
    """The promoted_student record (its one row); refused in one line when nothing is promoted."""
    if not record_path.is_file():
        raise ExportError(
            f"no promoted student: {record_path} does not exist; materialise promoted_student (or choose one "
            "with `opengrok promote MODE` and materialise it)"
        )
    row = pd.read_parquet(record_path).iloc[0].to_dict()
    if not row["promoted"]:
        raise ExportError(f"no promoted student ({row['reason']}); choose one with `opengrok promote MODE`")
    return row


def export_merged(promoted: dict, base_model: str, target: Path) -> Path:
    """Merge the promoted adapter into ``base_model`` and publish it at ``target`` (atomically, as a directory)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_identity(promoted["base_model"]) != model_identity(base_model):
        raise ExportError(
            f"lora:{promoted['mask_mode']} was trained on {promoted['base_model']!r}, not on the student "
            f"{base_model!r}: set OPENGROK_STUDENT_MODEL to its base model, or promote an adapter of this student"
        )
    staging = partial_path(target)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, promoted["adapter_dir"]).merge_and_unload()
        merged.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_model).save_pretrained(staging)
        record = {key: promoted[key] for key in ("mask_mode", "adapter_dir", "adapter_version", "how", "reason")}
        (staging / EXPORT_RECORD).write_text(json.dumps(record | {"base_model": base_model}, indent=2))
        (staging / "README.md").write_text(_card(promoted, base_model))
        publish_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _card(promoted: dict, base_model: str) -> str:
    merged = (
        f"\n\n## Merged export\n\n`{base_model}` with the OpenGrok LoRA adapter `lora:{promoted['mask_mode']}` "
        f"(weights {promoted['adapter_version']}) merged in (peft `merge_and_unload`); promoted: {promoted['reason']}.\n"
    )
    return (promoted.get("card") or f"# OpenGrok student (lora:{promoted['mask_mode']})") + merged


def require_free_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ExportError(
                f"port {port} is in use: choose another with --port, or stop what listens there"
            ) from None


def export_server(export_dir: Path, port: int | None, log_path: Path | None = None) -> TeacherServer:
    """The OpenAI-compatible server of an export (not started); refused when there is no export or the port is
    taken. Requests name the model as ``server.model_id``."""
    if not (export_dir / EXPORT_RECORD).is_file():
        raise ExportError(f"no exported student at {export_dir}: run `opengrok export` first")
    if port is not None:
        require_free_port(port)
    return TeacherServer(export_dir, port=port, log_path=log_path)
