"""Atomic publishing: the helper and the Parquet IO manager, on a local disk and on fsspec's memory file system
(the stand-in for an object store), including that a failure part-way through a write publishes nothing."""

import pathlib
import uuid

import pandas as pd
import pytest
from dagster import AssetKey, DailyPartitionsDefinition, asset, build_input_context, build_output_context, materialize
from upath import UPath

import resources.parquet_io as parquet_io
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.publish import publish_directory, publishing
from resources import ParquetIOManager


@pytest.fixture(params=["local", "memory"])
def base(request, tmp_path):
    """An asset directory on a local disk, or under a fresh memory:// bucket."""
    if request.param == "local":
        yield tmp_path / "assets"
        return
    root = UPath(f"memory://opengrok-test-{uuid.uuid4().hex[:8]}/assets")
    yield root
    if root.fs.exists(root.parent.path):
        root.fs.rm(root.parent.path, recursive=True)


def names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_publishing_moves_every_file_into_place_only_on_success(base):
    first, second = base / "a.txt", base / "sub" / "b.txt"
    with publishing(first, second) as (partial_first, partial_second):
        partial_first.write_text("one")
        partial_second.write_text("two")
        assert not first.exists()  # nothing visible while writing
    assert first.read_text() == "one" and second.read_text() == "two"
    with pytest.raises(RuntimeError), publishing(first, second) as (partial_first, partial_second):
        partial_first.write_text("half")
        raise RuntimeError("disk full")
    assert first.read_text() == "one" and second.read_text() == "two"
    assert names(base) == ["a.txt", "sub"] and names(base / "sub") == ["b.txt"]  # no temporary file left


def test_publish_directory_swaps_a_whole_directory(tmp_path):
    target = tmp_path / "checkpoints" / "hard"
    for version in ("old", "new"):
        staging = tmp_path / f"staging-{version}"
        staging.mkdir()
        (staging / "weights").write_text(version)
        publish_directory(staging, target)
        assert (target / "weights").read_text() == version and not staging.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["hard"]


def test_io_manager_writes_partitions_where_the_layout_says(base):
    @asset(partitions_def=DailyPartitionsDefinition(start_date="2026-01-01"))
    def daily_numbers(context) -> pd.DataFrame:
        return pd.DataFrame({"day": [context.partition_key], "n": [1]})

    resources = {"io_manager": ParquetIOManager(base_dir=str(base))}
    result = materialize([daily_numbers], partition_key="2026-01-02", resources=resources)
    assert result.success
    layout = HomeLayout(pathlib.Path("/home"))  # the same segments below assets_dir, wherever that is
    below_assets = layout.asset_path("daily_numbers", "2026-01-02").relative_to(layout.assets_dir)
    published = UPath(base) / below_assets.as_posix()
    assert names(published.parent) == ["2026-01-02.parquet"]
    with published.open("rb") as handle:
        assert pd.read_parquet(handle)["day"].tolist() == ["2026-01-02"]


def test_a_failure_part_way_through_a_write_publishes_nothing(base, monkeypatch):
    manager = ParquetIOManager(base_dir=str(base)).create_io_manager(None)
    context = build_output_context(asset_key="numbers")
    target = UPath(base) / "numbers.parquet"
    manager.dump_to_path(context, pd.DataFrame({"n": [1, 2]}), target)

    def write_half_then_fail(table, sink):
        sink.write(b"PAR1 half a file")
        raise OSError("connection reset by the object store")

    monkeypatch.setattr(parquet_io.pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="connection reset"):
        manager.dump_to_path(context, pd.DataFrame({"n": [3, 4, 5]}), target)
    monkeypatch.undo()
    assert names(base) == ["numbers.parquet"]  # the temporary key is gone
    with target.open("rb") as handle:
        assert pd.read_parquet(handle)["n"].tolist() == [1, 2]  # the previous version, whole


def test_a_non_dataframe_is_refused_before_anything_is_written(base):
    manager = ParquetIOManager(base_dir=str(base)).create_io_manager(None)
    with pytest.raises(TypeError, match="must return a pandas DataFrame"):
        manager.dump_to_path(build_output_context(asset_key="numbers"), {"n": 1}, UPath(base) / "numbers.parquet")
    assert names(base) == []


def test_an_unreadable_or_missing_file_is_named_with_the_fix(base):
    manager = ParquetIOManager(base_dir=str(base)).create_io_manager(None)
    target = UPath(base) / "numbers.parquet"
    context = build_input_context(asset_key=AssetKey("numbers"))
    with pytest.raises(ValueError, match=r"cannot read .*numbers.parquet for asset numbers: .*re-materialise"):
        manager.load_from_path(context, target)  # missing: a plain input may not be
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"cannot read .*numbers.parquet for asset numbers"):
        manager.load_from_path(context, target)
