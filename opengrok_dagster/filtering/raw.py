"""Reading the raw responses of the chosen collection rounds straight from their Parquet files.

The filtered set is unpartitioned while raw responses are partitioned topic x daily round, so it reads the
files of the rounds it needs (``<assets>/raw_responses/<round>/<topic>.parquet``) instead of asking the IO
manager for every partition since the start date.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from opengrok_dagster.filtering.annotations import ANNOTATION_COLUMNS
from opengrok_dagster.layout import ASSET_SUFFIX
from opengrok_dagster.tasks.schemas import OPTIONAL_RAW_COLUMNS, RAW_COLUMNS, read_stored


# Added later: files written before it read as "no anomaly" rather than needing a re-collection.
ROUND_SELECTIONS = ("latest", "last_n", "all")
_ROUND_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def available_rounds(raw_dir: Path) -> list[str]:
    if not raw_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in raw_dir.iterdir()
        if p.is_dir() and _ROUND_DIR.match(p.name) and any(p.glob(f"*{ASSET_SUFFIX}"))
    )


def choose_rounds(available: list[str], selection: str, last_n: int) -> list[str]:
    """``latest``, the ``last_n`` newest, or ``all`` of the collected rounds, oldest first."""
    if selection not in ROUND_SELECTIONS:
        raise ValueError(f"round selection {selection!r} is not one of {ROUND_SELECTIONS}")
    if selection == "latest":
        return available[-1:]
    if selection == "last_n":
        if last_n < 1:
            raise ValueError(f"last_n must be >= 1, got {last_n}")
        return available[-last_n:]
    return list(available)


def read_raw_responses(raw_dir: Path, rounds: list[str]) -> pd.DataFrame:
    """Every topic's raw responses for ``rounds``; a malformed file is an error naming it and the fix."""
    if not rounds:
        raise ValueError(
            f"no collected rounds under {raw_dir}; materialise raw_responses for at least one topic and round first"
        )
    frames = []
    for round_key in rounds:
        for path in sorted((raw_dir / round_key).glob(f"*{ASSET_SUFFIX}")):
            frame = read_stored(
                path, "raw responses", RAW_COLUMNS, "re-materialise that raw_responses partition with the current code"
            )
            frames.append(
                frame.reindex(
                    columns=[
                        *RAW_COLUMNS,
                        *OPTIONAL_RAW_COLUMNS,
                        *(c for c in ANNOTATION_COLUMNS if c in frame.columns),
                    ]
                )
            )
    return pd.concat(frames, ignore_index=True)
