"""The teacher's logprobs of the collected responses, read from the raw responses' Parquet files by example id."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from opengrok_dagster.filtering.chain import example_id
from opengrok_dagster.tasks.schemas import read_stored


KEY_COLUMNS = ("prompt_id", "teacher_model", "sampling_key", "round")
LOGPROBS_COLUMN = "logprobs"


def read_teacher_logprobs(raw_dir: Path, rounds: Iterable[str]) -> pd.DataFrame:
    """``example_id, logprobs`` of every raw response of ``rounds``; files collected without the column give None."""
    frames = []
    for round_key in sorted(set(rounds)):
        for path in sorted((raw_dir / round_key).glob("*.parquet")):
            frame = read_stored(path, "raw responses", KEY_COLUMNS, "re-materialise that raw_responses partition")
            logprobs = frame[LOGPROBS_COLUMN] if LOGPROBS_COLUMN in frame.columns else None
            frames.append(
                pd.DataFrame(
                    {
                        "example_id": [
                            example_id(*key) for key in frame.loc[:, list(KEY_COLUMNS)].itertuples(index=False)
                        ],
                        LOGPROBS_COLUMN: logprobs.to_numpy() if logprobs is not None else None,
                    }
                )
            )
    if not frames:
        return pd.DataFrame({"example_id": pd.Series(dtype=str), LOGPROBS_COLUMN: pd.Series(dtype=object)})
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("example_id", keep="last")
    values = frame[LOGPROBS_COLUMN].astype(object)
    return frame.assign(**{LOGPROBS_COLUMN: values.where(values.notna(), None)})  # None, never NaN, when absent
