"""The adapter's model card (README.md): hub metadata a user can publish as is, and how the adapter was made.

The metadata follows the Hugging Face model card spec: ``base_model`` is a hub id (never a local path; left out
when the base is a local checkpoint with no known hub origin), ``license`` the base model's when known,
``pipeline_tag``/``library_name`` for a peft text-generation adapter, and ``model-index`` holds the evaluation's
scores once the evaluation has run (``record_eval_results``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from opengrok_dagster import offline_model as offline


PIPELINE_TAG = "text-generation"
TAGS = ["opengrok", "lora", "distillation", "peft"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CACHE_DIR = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>.+)$")  # huggingface_hub's cache layout


def hub_base_model(model_path: str) -> tuple[str | None, str | None]:
    """The hub id and license of the base model at ``model_path`` (a hub id or a local directory), as far as they
    are known without a network request: the provisioned offline model, a hub id, a directory in the hub cache,
    or a checkpoint whose own model card or config names them."""
    path = Path(model_path).expanduser()
    if not path.exists():
        return (model_path, None) if _HUB_ID.match(model_path) else (None, None)
    if (path / offline.PROVENANCE_FILE).is_file():
        return offline.HUB_ID, offline.LICENSE
    card = _card_metadata(path / "README.md")
    for part in reversed(path.resolve().parts):
        match = _CACHE_DIR.match(part)
        if match:
            return f"{match['owner']}/{match['name']}", card.get("license")
    try:
        recorded = json.loads((path / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        recorded = ""
    hub_id = recorded if _HUB_ID.match(recorded) and not Path(recorded).expanduser().exists() else None
    return hub_id, card.get("license")


def _card_metadata(readme: Path) -> dict:
    """The base model's own card metadata; an unreadable card only means its license is not known."""
    if not readme.is_file():
        return {}
    try:
        return ModelCard.load(readme).data.to_dict()
    except (ValueError, OSError, yaml.YAMLError):
        return {}


def card_metadata(base_model: str, mask_mode: str) -> ModelCardData:
    hub_id, license_id = hub_base_model(base_model)
    return ModelCardData(
        base_model=hub_id,
        license=license_id,
        library_name="peft",
        pipeline_tag=PIPELINE_TAG,
        tags=[*TAGS, f"mask-{mask_mode}"],
        model_name=adapter_model_name(mask_mode),
    )


def write_card(path: Path, data: ModelCardData, body: str) -> None:
    """Write the card atomically: a reader (or an upload) never sees half a README."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(f"---\n{data.to_yaml()}\n---\n{body}")
    os.replace(partial, path)


def adapter_model_name(mask_mode: str) -> str:
    """The adapter's name in its card's ``model-index``."""
    return f"opengrok-{mask_mode}"


def record_eval_results(readme: Path, mask_mode: str, results: list[EvalResult]) -> None:
    """Replace the card's ``model-index`` with ``results`` (this evaluation's), keeping the rest of the card
    (a card peft wrote has no model name, which a model-index needs)."""
    card = ModelCard.load(readme)
    card.data.model_name = card.data.model_name or adapter_model_name(mask_mode)
    card.data.eval_results = results or None
    write_card(readme, card.data, card.text)
