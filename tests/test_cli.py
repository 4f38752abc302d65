"""`opengrok topics ...` against a real on-disk Dagster instance."""

import pytest
import yaml

from opengrok_dagster.cli import main


@pytest.fixture
def opengrok_home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # the CLI defaults it to $OPENGROK_HOME/dagster_home
    return tmp_path


def test_topics_sync_add_list_remove(opengrok_home, capsys):
    assert main(["topics", "sync"]) == 0
    assert main(["topics", "add", "k-pop"]) == 0
    assert main(["topics", "remove", "football"]) == 0
    capsys.readouterr()
    assert main(["topics", "list"]) == 0
    assert capsys.readouterr().out.split() == ["climate", "smartphones", "k-pop"]
    written = yaml.safe_load((opengrok_home / "dagster_home" / "dagster.yaml").read_text())
    assert written["telemetry"] == {"enabled": False}
    assert written["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}  # gpu and teacher pools: 1


def test_invalid_topic_key_is_refused_without_traceback(opengrok_home, capsys):
    assert main(["topics", "add", "news/tech"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opengrok: error: topic key 'news/tech' contains '/'") and "Traceback" not in err


def test_removing_an_unknown_topic_names_it(opengrok_home):
    with pytest.raises(SystemExit, match="topic 'nope' is not a partition"):
        main(["topics", "remove", "nope"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--topics", "k-pop"], "--topics: 'k-pop' not a topic partition; add it with `opengrok topics add k-pop`"),
        (["--modes", "none,sparse"], "--modes: unknown mask mode(s) sparse; choose from none, paper, hard, soft"),
    ],
    ids=["unknown-topic", "unknown-mask-mode"],
)
def test_run_refuses_unknown_partitions_before_any_work(opengrok_home, capsys, arguments, message):
    assert main(["run", *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"opengrok: error: {message}") and "Traceback" not in err
    assert not (opengrok_home / "assets").exists()
