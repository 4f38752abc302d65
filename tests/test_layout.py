"""The layout under $OPENGROK_HOME has one owner: opengrok_dagster.layout. Its consumers resolve paths through
it (checked here against what they actually write), and no other product module spells its segments."""

import ast
import re
from pathlib import Path

import pandas as pd
from dagster import MultiPartitionKey, MultiPartitionsDefinition, StaticPartitionsDefinition, asset, materialize

from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths, ParquetIOManager
from tests.conftest import REPO_ROOT


PRODUCT = ["opengrok_dagster", "assets", "resources", "bench", "experiments"]
# Path segments: flagged where a string is joined onto a path with `/` (``"mask_tables"`` is left out: it is also
# the asset's name, and the layout names the vocabulary directory after it).
SEGMENTS = {"assets", "checkpoints", "reports", "logs", "dagster_home", "teacher-server.log"}
# Spelled anywhere: the stores' file names, the Trainer's work directories, paths written out in a string.
SPELLING = re.compile(
    r"^(responses|reviews|eval_answers)\.sqlite$|^\.work-|(^|/)(assets|checkpoints|reports|logs|dagster_home)/"
)
# training/job.py (TrainingJob) derives its work directory from the checkpoint directory; the
# agreement with the layout is tested in test_the_trainer_keeps_its_work_where_the_layout_says.
ALLOWED = {"opengrok_dagster/training/job.py": [".work-"]}


def spelled_segments(source: str) -> list[str]:
    """String constants (docstrings aside) that spell a path segment of the layout."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    joined = {
        id(node.right) for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and ((node.value in SEGMENTS and id(node) in joined) or SPELLING.search(node.value))
    ]


def test_the_check_finds_a_path_spelled_outside_the_layout():
    found = spelled_segments('path = home / "checkpoints" / mode\nstore = home / "reviews.sqlite"')
    assert sorted(found) == ["checkpoints", "reviews.sqlite"]
    assert spelled_segments('work = f".work-{mode}"') == [".work-"]
    assert spelled_segments('def f():\n    """Reads $OPENGROK_HOME/checkpoints/<mode>/."""') == []
    assert spelled_segments('metadata = {"checkpoints": 4}') == []  # a name, not a path


def test_no_product_module_but_the_layout_spells_its_paths():
    spelled = {
        str(path.relative_to(REPO_ROOT)): found
        for package in PRODUCT
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if path.name != "layout.py" and (found := spelled_segments(path.read_text(encoding="utf-8")))
    }
    assert spelled == ALLOWED


def test_the_io_manager_publishes_where_the_layout_says(tmp_path):
    layout = HomeLayout(tmp_path)
    by_topic_and_round = MultiPartitionsDefinition(
        {
            "topic": StaticPartitionsDefinition(["chess"]),
            "round": StaticPartitionsDefinition(["2026-11-24"]),
        }
    )

    @asset(name="raw_responses", partitions_def=by_topic_and_round)
    def raw() -> pd.DataFrame:
        return pd.DataFrame({"n": [1]})

    @asset(name="filtered_responses")
    def filtered() -> pd.DataFrame:
        return pd.DataFrame({"n": [2]})

    resources = {"io_manager": ParquetIOManager(base_dir=str(layout.assets_dir))}
    key = MultiPartitionKey({"topic": "chess", "round": "2026-11-24"})
    assert materialize([raw], partition_key=key, resources=resources).success
    assert materialize([filtered], resources=resources).success
    assert pd.read_parquet(layout.collection_asset_path("raw_responses", "chess", "2026-11-24"))["n"].tolist() == [1]
    assert pd.read_parquet(layout.filtered_responses_path)["n"].tolist() == [2]
    assert [p.name for p in layout.raw_responses_dir.iterdir()] == ["2026-11-24"]


def test_definitions_settings_and_resources_resolve_through_the_layout(tmp_path, monkeypatch):
    from opengrok_dagster import settings
    from opengrok_dagster.definitions import build_definitions

    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("OPENGROK_TEACHER_BASE_URL", raising=False)
    layout = HomeLayout(tmp_path)
    assert settings.home_layout() == layout and settings.dagster_home() == layout.dagster_home
    resources = build_definitions().resources
    assert resources["io_manager"].base_dir == str(layout.assets_dir)
    assert resources["teacher"].server_log == str(layout.teacher_server_log)
    paths = OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml"))
    assert paths.layout == layout
    store = paths.response_store()
    assert store.path == layout.response_store_path
    store.close()


def test_the_trainer_keeps_its_work_where_the_layout_says(tmp_path):
    from opengrok_dagster.training.config import TrainingConfig
    from opengrok_dagster.training.device import Placement
    from opengrok_dagster.training.job import TrainingJob

    layout = HomeLayout(tmp_path)
    job = TrainingJob("soft", "model", layout.checkpoint_dir("soft"), TrainingConfig(), Placement("cpu", "fp32"))
    assert job.work_dir == layout.training_work_dir("soft")


def test_every_path_is_under_home():
    layout = HomeLayout(Path("/srv/opengrok"))
    paths = [getattr(layout, name) for name in dir(HomeLayout) if isinstance(getattr(HomeLayout, name), property)]
    assert len(paths) >= 12 and all(path.is_relative_to(layout.home) and path != layout.home for path in paths)
    assert len(set(paths)) == len(paths)
