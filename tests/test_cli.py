"""`opengrok topics ...` against a real on-disk Dagster instance."""

import pytest

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
    assert (opengrok_home / "dagster_home" / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_invalid_topic_key_is_refused_without_traceback(opengrok_home, capsys):
    assert main(["topics", "add", "news/tech"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opengrok: error: topic key 'news/tech' contains '/'") and "Traceback" not in err


def test_removing_an_unknown_topic_names_it(opengrok_home):
    with pytest.raises(SystemExit, match="topic 'nope' is not a partition"):
        main(["topics", "remove", "nope"])
