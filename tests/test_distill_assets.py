"""The kd_targets asset on a real Dagster instance: mask tables, filtered responses and raw responses' logprobs."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import AssetSpec, materialize
from transformers import AutoTokenizer

from assets.distillation import kd_targets
from opengrok_dagster.distill.align import StudentVocabulary
from opengrok_dagster.distill.targets import KDTargets
from opengrok_dagster.filtering.chain import example_id
from opengrok_dagster.masks.render import ChatRenderer
from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths, ParquetIOManager, StudentResource
from tests.test_masks import filtered_frame, real_tweets


ROUND = "2026-11-24"


@pytest.fixture(scope="module")
def tokenizer(offline_model):
    return AutoTokenizer.from_pretrained(offline_model)


def teacher_entries(tokenizer, text: str) -> list[dict]:
    """A stand-in teacher that tokenises like the student: the chat-completions logprobs shape, bytes included."""
    vocabulary = StudentVocabulary.of(tokenizer)
    pieces = [vocabulary.token_bytes[i] for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    return [
        {
            "token": p.decode(errors="replace"),
            "logprob": -0.2,
            "bytes": list(p),
            "top_logprobs": [{"token": " the", "logprob": -2.0, "bytes": list(b" the")}],
        }
        for p in pieces
    ]


def upstream(tmp_path, tokenizer, logprobs_for=lambda index, response: response):
    """filtered_responses, mask_tables and one raw_responses partition (every fourth row without logprobs)."""
    tweets = real_tweets()[:12]
    filtered = filtered_frame([f"How does this post feel? {t}" for t in tweets], list(reversed(tweets)))
    filtered["sampling_key"] = "t0.7"
    keys = zip(filtered["prompt_id"], filtered["teacher_model"])
    filtered["example_id"] = [example_id(prompt, model, "t0.7", ROUND) for prompt, model in keys]
    renderer = ChatRenderer(tokenizer)
    rows = []
    for record in filtered.itertuples():
        rendered = renderer.render(record.system_prompt, record.prompt, record.response)
        encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        start = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > rendered.spans["response"][0])
        rows.append(
            {
                "example_id": record.example_id,
                "split": record.split,
                "input_ids": encoded["input_ids"][:96],
                "response_start": start,
                "text": rendered.text,
                "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            }
        )
    raw = filtered.loc[:, ["prompt_id", "teacher_model", "sampling_key", "round", "response"]].copy()
    raw["logprobs"] = [
        None if index % 4 == 3 else json.dumps(teacher_entries(tokenizer, logprobs_for(index, response)))
        for index, response in enumerate(raw["response"])
    ]
    assets = tmp_path / "assets"
    (assets / "raw_responses" / ROUND).mkdir(parents=True, exist_ok=True)
    raw.to_parquet(assets / "raw_responses" / ROUND / "climate.parquet")
    filtered.drop(columns="sampling_key").to_parquet(assets / "filtered_responses.parquet")
    pd.DataFrame(rows).to_parquet(assets / "mask_tables.parquet")
    return filtered, pd.DataFrame(rows)


def run(instance, tmp_path, **config):
    return materialize(
        [AssetSpec("filtered_responses"), AssetSpec("mask_tables"), AssetSpec("raw_responses"), kd_targets],
        instance=instance,
        resources={
            "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
            "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
            "student": StudentResource(),
        },
        run_config={"ops": {"kd_targets": {"config": config}}},
        raise_on_error=False,
    )


def test_kd_targets_publish_one_row_per_mask_row_with_the_aligned_share(instance, tmp_path, tokenizer):
    _, masks = upstream(tmp_path, tokenizer)
    result = run(instance, tmp_path)
    assert result.success
    path = tmp_path / "assets" / "kd_targets.parquet"
    table = pd.read_parquet(path)
    assert list(table["example_id"]) == list(masks["example_id"])
    assert str(pq.read_schema(path).field("kd_token_ids").type) == "list<element: list<element: int32>>"
    without = table.iloc[3::4]
    assert (without["aligned_tokens"] == 0).all() and without["kd_positions"].map(len).eq(0).all()
    metadata = result.asset_materializations_for_node("kd_targets")[0].metadata
    assert metadata["rows_with_logprobs"].value == 9 and metadata["rows_without_logprobs"].value == 3
    assert metadata["aligned_share"].value > 0.95  # cut rows (max 96 tokens) lose their tail, nothing else
    assert metadata["tokenizer_fingerprint"].value == tokenizer_fingerprint(tokenizer)
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"aligned_share_at_least_minimum": True}
    targets = KDTargets.of(table, masks, tokenizer)  # what the trainer loads: same tokenizer, same rows
    assert len(targets.by_example) == 9 and targets.top_k == 2


def test_logprobs_of_other_texts_fail_the_blocking_check(instance, tmp_path, tokenizer):
    upstream(tmp_path, tokenizer, logprobs_for=lambda index, response: f"Something else entirely, number {index}.")
    result = run(instance, tmp_path)
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"aligned_share_at_least_minimum": False}


def test_malformed_logprobs_fail_the_step_naming_the_example(instance, tmp_path, tokenizer):
    filtered, _ = upstream(tmp_path, tokenizer)
    raw_path = tmp_path / "assets" / "raw_responses" / ROUND / "climate.parquet"
    raw = pd.read_parquet(raw_path)
    raw.loc[0, "logprobs"] = '{"content": [truncated'
    raw.to_parquet(raw_path)
    result = run(instance, tmp_path)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert f"raw response of example {filtered['example_id'].iloc[0]}: logprobs is not JSON" in message
    assert not (tmp_path / "assets" / "kd_targets.parquet").exists()


def test_raw_files_collected_without_logprobs_give_none_by_example_id(tmp_path):
    from opengrok_dagster.distill.raw import read_teacher_logprobs

    keys = {"prompt_id": ["p1", "p2"], "teacher_model": "grok-4", "sampling_key": "t0.7", "round": ROUND}
    (tmp_path / ROUND).mkdir()
    pd.DataFrame(keys).to_parquet(tmp_path / ROUND / "old.parquet")  # collected before logprobs existed
    newer = pd.DataFrame({**keys, "prompt_id": ["p3", "p4"], "logprobs": ["[]", None]})
    newer.to_parquet(tmp_path / ROUND / "new.parquet")
    frame = read_teacher_logprobs(tmp_path, [ROUND, ROUND])
    expected = {
        example_id(p, "grok-4", "t0.7", ROUND): value
        for p, value in [("p1", None), ("p2", None), ("p3", "[]"), ("p4", None)]
    }
    assert dict(zip(frame["example_id"], frame["logprobs"])) == expected
    assert read_teacher_logprobs(tmp_path, ["2026-01-01"]).empty
