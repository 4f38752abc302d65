"""`opengrok lineage`: an example back to its prompt and teacher request; a checkpoint to what it trained on."""

import json

import pandas as pd
import pytest

from opengrok_dagster.cli import main
from opengrok_dagster.lineage import LineageError, checkpoint_lineage, example_lineage
from tests.test_filter_assets import raw_frame, run_filter, sentiment_tweets, write_raw


@pytest.fixture
def home(tmp_path, instance):
    """A home with a real filtered set (from raw responses on disk) and a checkpoint record naming two examples."""
    write_raw(tmp_path, raw_frame(sentiment_tweets(30), "climate", "2026-11-24"))
    assert run_filter(tmp_path, instance).success
    kept = pd.read_parquet(tmp_path / "assets" / "filtered_responses.parquet").query("state == 'kept'")
    checkpoint = tmp_path / "checkpoints" / "hard"
    checkpoint.mkdir(parents=True)
    record = {
        "mask_mode": "hard",
        "base_model": "SmolLM2-135M-Instruct",
        "data_versions": {"mask_tables": "abc"},
        "example_ids": sorted(kept["example_id"].iloc[:2]),
    }
    (checkpoint / "opengrok_checkpoint.json").write_text(json.dumps(record))
    return tmp_path


def test_example_chain_reaches_the_teacher_request_and_the_prompt(home):
    filtered = pd.read_parquet(home / "assets" / "filtered_responses.parquet")
    trained_on = json.loads((home / "checkpoints" / "hard" / "opengrok_checkpoint.json").read_text())["example_ids"][0]
    row = filtered.set_index("example_id").loc[trained_on]
    steps = example_lineage(home, trained_on)
    assert [step.artifact for step in steps] == [
        "lora_checkpoint[hard]",
        "filtered_responses",
        "raw_responses",
        "prompts",
    ]
    assert steps[1].facts["state"] == "kept" and steps[1].facts["split"] == row["split"]
    assert steps[2].facts["request_id"] == row["request_id"] and steps[2].facts["teacher_model"] == "grok-test"
    assert steps[3].facts["prompt_id"] == row["prompt_id"] and steps[3].facts["template_id"] == row["template_id"]


def test_checkpoint_chain_summarises_its_training_examples_by_source(home):
    steps = checkpoint_lineage(home, "hard")
    assert steps[0].facts["examples"] == 2 and len(steps[0].facts["example_ids"]) == 2
    (source,) = steps[1].facts["by_source"]
    assert (source["topic"], source["round"], source["teacher_model"]) == ("climate", "2026-11-24", "grok-test")


def test_cli_prints_the_chain_and_names_what_is_missing(home, monkeypatch, capsys):
    monkeypatch.setenv("OPENGROK_HOME", str(home))
    example = json.loads((home / "checkpoints" / "hard" / "opengrok_checkpoint.json").read_text())["example_ids"][0]
    assert main(["lineage", example]) == 0
    out = capsys.readouterr().out
    assert (
        out.index("lora_checkpoint[hard]")
        < out.index("<- filtered_responses")
        < out.index("<- raw_responses")
        < out.index("<- prompts")
    )
    assert main(["lineage", "soft"]) == 2
    assert "checkpoints/soft is not an OpenGrok checkpoint" in capsys.readouterr().err
    assert main(["lineage", "no-such-example"]) == 2
    assert "no example 'no-such-example'" in capsys.readouterr().err


def test_nothing_materialised_says_to_run_first(tmp_path):
    with pytest.raises(LineageError, match="filtered_responses is not materialised yet .* run `opengrok run` first"):
        example_lineage(tmp_path, "any")


def test_long_id_lists_print_as_counts_and_the_first_few_and_json_keeps_them_all(home, monkeypatch, capsys):
    record_path = home / "checkpoints" / "hard" / "opengrok_checkpoint.json"
    record = json.loads(record_path.read_text())
    ids = [f"{i:016x}" for i in range(243)]
    record["train_example_ids"] = sorted(ids + ids)  # balanced classes repeat examples
    record_path.write_text(json.dumps(record))
    monkeypatch.setenv("OPENGROK_HOME", str(home))
    assert main(["lineage", "hard"]) == 0
    out = capsys.readouterr().out
    assert f"train_example_ids: 486 (243 distinct): {ids[0]}, {ids[0]}, {ids[1]}, {ids[1]}, {ids[2]}, ..." in out
    assert ids[100] not in out and len(out.splitlines()) < 20
    assert main(["lineage", "hard", "--json"]) == 0
    (checkpoint, *_) = json.loads(capsys.readouterr().out)
    assert checkpoint["facts"]["train_example_ids"] == sorted(ids + ids) and checkpoint["facts"]["examples"] == 2
