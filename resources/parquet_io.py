"""Parquet IO manager for pandas DataFrames, publishing each partition atomically."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManagerFactory, InputContext, OutputContext, UPathIOManager
from pydantic import Field
from upath import UPath


class _AtomicParquetIO(UPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        """Write beside the target, then rename: a failed run never leaves a half-written file behind."""
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"asset {context.asset_key.to_user_string()} must return a pandas DataFrame, got {type(obj).__name__}")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        pq.write_table(pa.Table.from_pandas(obj, preserve_index=False), str(partial))
        os.replace(partial, path)

    def load_from_path(self, context: InputContext, path: UPath) -> pd.DataFrame:
        try:
            return pq.read_table(str(path)).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(
                f"cannot read {path} for asset {context.asset_key.to_user_string()}: {exc}; "
                "re-materialise that asset (partition) to rebuild it"
            ) from exc


class ParquetIOManager(ConfigurableIOManagerFactory):
    """Stores each asset (partition) as ``<base_dir>/<asset>/<partition dims...>.parquet``."""

    base_dir: str = Field(description="Directory that holds the asset Parquet files.")

    def create_io_manager(self, context) -> _AtomicParquetIO:
        return _AtomicParquetIO(base_path=UPath(self.base_dir))
