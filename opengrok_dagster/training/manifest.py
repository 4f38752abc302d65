"""The ``lora_checkpoint`` manifest: the one-row contract between a fine-tune and what reads its adapter.

Written from the trainer's outcome (``TrainingOutcome``, as the Pipes message carries it) and read back by the
evaluation as the adapter directory of each mask mode. Torch-free, so the Dagster layer can import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from opengrok_dagster.tasks.schemas import MANIFEST_COLUMNS, MANIFEST_REQUIRED_COLUMNS


def manifest_row(outcome: Mapping) -> dict:
    """The contract columns of one outcome (``dataclasses.asdict(TrainingOutcome)`` or the Pipes message)."""
    row = {column: outcome[column] for column in MANIFEST_REQUIRED_COLUMNS}
    row["mask_options"] = json.dumps(outcome.get("mask_options") or {}, sort_keys=True)
    row["checkpoint_selection"] = outcome.get("checkpoint_selection") or ""
    return row


def manifest_frame(outcome: Mapping) -> pd.DataFrame:
    """The asset value of ``lora_checkpoint[mode]``."""
    return pd.DataFrame([manifest_row(outcome)], columns=list(MANIFEST_COLUMNS))


def adapter_dirs(manifests: Mapping[str, pd.DataFrame]) -> dict[str, Path]:
    """Mask mode -> adapter directory, from the manifests of the materialised ``lora_checkpoint`` partitions."""
    dirs = {}
    for partition, manifest in manifests.items():
        missing = sorted(set(MANIFEST_REQUIRED_COLUMNS) - set(manifest.columns))
        if len(manifest) != 1 or missing:
            raise ValueError(
                f"the lora_checkpoint[{partition}] manifest is not one row with the contract columns "
                f"(missing: {', '.join(missing) or 'none'}, rows: {len(manifest)}); "
                f"re-materialise lora_checkpoint[{partition}]"
            )
        row = manifest.iloc[0]
        dirs[str(row["mask_mode"])] = Path(row["adapter_dir"])
    return dirs
