"""Reading an artifact another stage stored, with errors that name the file and how to rebuild it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def read_stored(path: Path, what: str, columns: Sequence[str], fix: str) -> pd.DataFrame:
    """``what`` names the artifact in messages; ``fix`` says how to rebuild it."""
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}; {fix}") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} {path} lacks the columns {missing}; {fix}")
    return frame
