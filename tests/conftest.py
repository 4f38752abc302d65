"""Shared fixtures: a temporary Dagster instance and OpenGrok home, the loopback teacher, the offline model."""

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance

from opengrok_dagster.collect.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.offline.model import check_offline_model, offline_model_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def texts_written_under(root: Path) -> str:
    """Everything readable that was written under ``root``, decoded: Parquet cells (the files themselves are
    compressed), every row of every SQLite table (event log, runs and their config, stores), other files as text."""
    texts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        head = path.read_bytes()[:16]
        if head.startswith(b"PAR1"):
            frame = pd.read_parquet(path)
            texts += [str(list(frame.columns)), frame.astype(str).to_csv()]
        elif head.startswith(b"SQLite format 3"):
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                texts += [repr(row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"')]
            finally:
                connection.close()
        texts.append(path.read_bytes().decode("latin-1"))  # the raw bytes too: WAL files, binary formats
    return "\n".join(texts)


@pytest.fixture(autouse=True, scope="session")
def _quiet_dagster_home(tmp_path_factory):
    """Tests never write to the developer's DAGSTER_HOME, and send no telemetry."""
    home = tmp_path_factory.mktemp("dagster_home_default")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    patch = pytest.MonkeyPatch()
    patch.setenv("DAGSTER_HOME", str(home))
    yield
    patch.undo()


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def persistent_instance(tmp_path):
    """A real on-disk Dagster instance (SQLite event log), as `dagster dev` and `opengrok run` use."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)) as local:
        yield local


@pytest.fixture
def loopback_teacher():
    with LoopbackTeacher(LoopbackConfig()) as server:
        yield server


@pytest.fixture(scope="session")
def offline_model() -> Path:
    """The provisioned SmolLM2 checkpoint; `make test` provisions it, so its absence is a failure."""
    return check_offline_model(offline_model_dir())
