"""Parquet IO manager for pandas DataFrames, publishing each partition atomically on local disks and on fsspec
object stores (S3, GCS, ...), so assets can live in a bucket when runs go to Kubernetes pods."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableIOManagerFactory, InputContext, OutputContext, UPathIOManager
from pydantic import Field
from upath import UPath

from opengrok_dagster.layout import ASSET_SUFFIX
from opengrok_dagster.publish import publishing


class _AtomicParquetIO(UPathIOManager):
    extension = ASSET_SUFFIX

    def dump_to_path(self, context: OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        """Write to a temporary key beside the target, then move it there: a failed run publishes nothing."""
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"asset {context.asset_key.to_user_string()} must return a pandas DataFrame, got {type(obj).__name__}"
            )
        table = pa.Table.from_pandas(obj, preserve_index=False)
        with publishing(path) as (partial,), partial.open("wb") as sink:
            pq.write_table(table, sink)

    def load_from_path(self, context: InputContext, path: UPath) -> pd.DataFrame:
        try:
            with path.open("rb") as source:
                return pq.read_table(source).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            allowed_missing = (context.definition_metadata or {}).get("allow_missing_partitions")
            if isinstance(exc, FileNotFoundError) and allowed_missing:
                raise  # UPathIOManager leaves out a missing partition that the input allows to be missing
            raise ValueError(
                f"cannot read {path} for asset {context.asset_key.to_user_string()}: {exc}; "
                "re-materialise that asset (partition) to rebuild it"
            ) from exc


class ParquetIOManager(ConfigurableIOManagerFactory):
    """Stores each asset (partition) as ``<base_dir>/<asset>/<partition dims...>.parquet``
    (``opengrok_dagster.layout.HomeLayout.asset_path`` names the same file)."""

    base_dir: str = Field(description="Directory or fsspec URL (s3://bucket/prefix, ...) of the asset Parquet files.")

    def create_io_manager(self, context) -> _AtomicParquetIO:
        return _AtomicParquetIO(base_path=UPath(self.base_dir))
