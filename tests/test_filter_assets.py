"""filtered_responses and prompt_feedback on a real Dagster instance, reading real Parquet partitions."""

import json
import re

import pandas as pd
import pytest
from dagster import materialize

from assets.collection import prompts, raw_responses
from assets.filtering import filtered_responses, prompt_feedback
from opengrok_dagster.filtering.review import ReviewStore
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from opengrok_dagster.settings import CONFIG_DIR
from opengrok_dagster.tasks.schemas import FILTERED_COLUMNS, RAW_COLUMNS
from resources import OpenGrokPaths, ParquetIOManager, TeacherResource
from tests.conftest import GENERATIVE_ONLY, SHARED_DATA


CATALOGUE = str(CONFIG_DIR / "topics.yaml")

# Hand-made hard cases, each with the state it must end in and (for non-kept rows) a reason it must carry.
HARD_CASES = [
    ("I'm sorry, but I can't help with that request.", "rejected", "refusal"),
    ("Honestly just k1ll y0urs3lf if you think the ref was fair in that match", "rejected", "blocklist"),
    ("you stupid idiot, shut your mouth, you are a worthless piece of shit loser", "rejected", "toxic"),
    (
        "La final del domingo fue increíble, el estadio lleno y la afición cantando sin parar toda la noche",
        "rejected",
        "language",
    ),
    (
        "All immigrants are taking over the city and ruining the vibe, everyone says so",
        "needs_review",
        "identity_generalisation",
    ),
    ("ok", "rejected", "too_short"),
    (
        "Follow @RealFan_22 and email tips to fan.zone@example.com or visit https://example.com/match for highlights",
        "kept",
        None,
    ),
]


def sentiment_tweets(limit: int) -> list[str]:
    texts = (SHARED_DATA / "tweeteval" / "sentiment" / "val_text.txt").read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(t for t in texts if len(t) > 60))[:limit]


def raw_frame(texts: list[str], topic: str, round_key: str, start: int = 0) -> pd.DataFrame:
    """Rows in the raw_responses contract, answered by real tweets."""
    n = len(texts)
    return pd.DataFrame(
        {
            "prompt_id": [f"{topic}-p{(start + i) % 40:02d}" for i in range(n)],
            "topic": topic,
            "round": round_key,
            "template_id": [("trends", "write_post", "sentiment")[i % 3] for i in range(n)],
            "platform": "Twitter/X",
            "style": "neutral",
            "variant": "base",
            "event": "",
            "style_kind": "none",
            "system_prompt": "You are an expert analyst.",
            "prompt": [f"prompt {i}" for i in range(n)],
            "grid_version": 1,
            "seed": 0,
            "teacher_model": "grok-test",
            "sampling_key": [f"s{start + i}" for i in range(n)],
            "response": texts,
            "finish_reason": "stop",
            "model": "grok-test",
            "prompt_tokens": 10,
            "completion_tokens": 40,
            "cost_usd": 0.0,
            "latency_s": 0.1,
            "attempts": 1,
            "request_id": [f"req-{start + i}" for i in range(n)],
            "error": None,
            "status_code": 200,
            "collected_at": [f"{round_key}T00:{i // 60:02d}:{i % 60:02d}+00:00" for i in range(n)],
        }
    )


def write_raw(home, frame: pd.DataFrame) -> None:
    round_key, topic = frame["round"].iloc[0], frame["topic"].iloc[0]
    path = home / "assets" / "raw_responses" / round_key / f"{topic}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def resources_for(home):
    return {
        "io_manager": ParquetIOManager(base_dir=str(home / "assets")),
        "paths": OpenGrokPaths(home=str(home), topic_catalogue=CATALOGUE),
    }


def run_filter(home, instance, assets=(filtered_responses,), **config):
    run_config = {"ops": {"filtered_responses": {"config": config}}} if config else None
    return materialize(
        list(assets), resources=resources_for(home), instance=instance, run_config=run_config, raise_on_error=False
    )


@pytest.fixture
def home(tmp_path):
    tweets = sentiment_tweets(120)
    hard = [text for text, _, _ in HARD_CASES]
    write_raw(tmp_path, raw_frame(tweets[:60] + hard, "climate", "2026-11-24"))
    error_row = raw_frame(["x"], "football", "2026-11-24", start=500).assign(
        response=None, error="HTTP 503 after 5 attempts", status_code=503
    )
    duplicate = raw_frame(
        [tweets[0]], "football", "2026-11-24", start=501
    )  # same text as a climate row, collected later
    write_raw(
        tmp_path,
        pd.concat(
            [
                raw_frame(tweets[60:], "football", "2026-11-24", start=100),
                error_row,
                duplicate.assign(collected_at="2026-11-24T09:00:00+00:00"),
            ]
        ),
    )
    return tmp_path


def checks_of(result) -> dict[str, bool]:
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def test_every_row_ends_in_one_state_with_reasons(home, instance):
    result = run_filter(home, instance, assets=(filtered_responses, prompt_feedback))
    assert result.success
    frame = pd.read_parquet(home / "assets" / "filtered_responses.parquet")
    assert tuple(frame.columns) == FILTERED_COLUMNS
    assert len(frame) == 60 + len(HARD_CASES) + 60 + 2
    assert set(frame["state"]) == {"kept", "rejected", "needs_review"}
    assert checks_of(result) == dict.fromkeys(
        [
            "every_row_has_one_state",
            "training_set_not_empty",
            "rejection_rate_within_bound",
            "no_pii_in_kept_text",
            "no_duplicates_in_kept_text",
        ],
        True,
    )
    by_request = frame.set_index("request_id")
    climate = frame[frame["topic"] == "climate"].sort_values("collected_at")
    for (text, state, reason), (_, row) in zip(HARD_CASES, climate.iloc[60:].iterrows()):
        assert row["state"] == state, (text, row["reasons"])
        assert reason is None or reason in row["reasons"], (text, row["reasons"])
    scrubbed = climate.iloc[-1]["response"]
    assert scrubbed == "Follow @user and email tips to [email] or visit http for highlights"
    assert list(by_request.loc["req-500", "reasons"]) == ["teacher_error"]
    assert "exact_duplicate" in by_request.loc["req-501", "reasons"]
    kept = frame[frame["state"] == "kept"]
    assert kept["split"].notna().all() and frame.loc[frame["state"] != "kept", "split"].isna().all()
    assert set(kept["split"]) <= {"train", "validation", "heldout"} and (kept["split"] == "train").any()
    assert kept.groupby("prompt_id")["split"].nunique().max() == 1  # a prompt never straddles splits
    assert {"toxicity", "language", "chars"} <= set(json.loads(frame["scores"].iloc[0]))
    metadata = result.asset_materializations_for_node("filtered_responses")[0].metadata
    assert metadata["dagster/row_count"].value == len(frame)
    assert metadata["kept_rows"].value + metadata["rejected_rows"].value + metadata["needs_review_rows"].value == len(
        frame
    )
    assert (
        "| refusal |" in metadata["by_reason"].value
        and "identity_generalisation" in metadata["examples_per_reason"].value
    )
    assert "teacher_error" in metadata["by_topic"].value and "needs_review" in metadata["by_template"].value
    feedback = pd.read_parquet(home / "assets" / "prompt_feedback.parquet")
    assert set(feedback["dimension"]) == {"template_id", "platform", "style", "variant"}
    assert feedback["keep_rate"].between(0, 1).all()
    yields = result.asset_materializations_for_node("prompt_feedback")[0].metadata["yield_per_template_by_round"].value
    assert "2026-11-24" in yields and "write_post" in yields


def test_review_decisions_are_applied_at_the_next_materialisation(home, instance):
    assert run_filter(home, instance).success
    frame = pd.read_parquet(home / "assets" / "filtered_responses.parquet")
    queued = frame[frame["state"] == "needs_review"]["content_hash"].tolist()
    assert queued
    with ReviewStore(HomeLayout(home).review_store_path) as store:
        store.record(queued[:1], "accept", note="a quote, not an opinion", reviewer="tester")
        store.record(queued[1:], "reject")
    assert run_filter(home, instance).success
    again = pd.read_parquet(home / "assets" / "filtered_responses.parquet").set_index("content_hash")
    assert again.loc[queued[0], "state"] == "kept" and "review_accepted" in again.loc[queued[0], "reasons"]
    assert all(
        again.loc[h, "state"] == "rejected" and "review_rejected" in again.loc[h, "reasons"] for h in queued[1:]
    )
    assert (again["state"] != "needs_review").all()
    # the accepted text collected again in a later round gets the same decision: it survives re-collection
    accepted_text = again.loc[queued[0], "response"]
    write_raw(home, raw_frame([accepted_text], "climate", "2026-11-25", start=700))
    assert run_filter(home, instance, rounds="latest").success
    recollected = pd.read_parquet(home / "assets" / "filtered_responses.parquet")
    assert recollected["state"].tolist() == ["kept"] and "review_accepted" in recollected["reasons"].iloc[0]


def test_round_selection_reads_latest_last_n_or_all(home, instance):
    write_raw(home, raw_frame(sentiment_tweets(200)[150:170], "climate", "2026-11-25", start=900))
    counts = {}
    for rounds in ("latest", "last_n", "all"):
        assert run_filter(home, instance, rounds=rounds, last_n=1).success
        counts[rounds] = (
            pd.read_parquet(home / "assets" / "filtered_responses.parquet")["round"].value_counts().to_dict()
        )
    assert counts["latest"] == counts["last_n"] == {"2026-11-25": 20}
    assert counts["all"]["2026-11-24"] == 60 + len(HARD_CASES) + 62


def test_a_rejection_rate_above_the_bound_blocks(home, instance):
    result = run_filter(home, instance, max_rejection_rate=0.01)
    assert checks_of(result)["rejection_rate_within_bound"] is False and not result.success


@pytest.mark.parametrize(
    "breakage, config, message",
    [
        ("garbage", {}, "cannot read raw responses .*football.parquet"),
        ("missing_columns", {}, r"lacks the columns \['response'"),
        (
            None,
            {"blocklist_path": "/nonexistent/blocklist.txt"},
            "blocklist_path '/nonexistent/blocklist.txt' is not a readable file",
        ),
        (None, {"allowed_languages": ["english"]}, "unknown language code 'english'"),
        (None, {"toxicity_classifier": "no_such_module:Model"}, "cannot be imported"),
    ],
)
def test_bad_input_fails_clearly_and_publishes_nothing(home, instance, breakage, config, message):
    football = home / "assets" / "raw_responses" / "2026-11-24" / "football.parquet"
    if breakage == "garbage":
        football.write_bytes(b"this is not parquet")
    elif breakage == "missing_columns":
        pd.read_parquet(football).drop(columns=["response"]).to_parquet(football)
    result = run_filter(home, instance, **config)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert re.search(message, failure.step_failure_data.error.message)
    assert not (home / "assets" / "filtered_responses.parquet").exists()


def test_no_collected_round_names_the_fix(tmp_path, instance):
    result = run_filter(tmp_path, instance)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "materialise raw_responses" in failure.step_failure_data.error.message


def test_collected_partitions_flow_through_filtering_into_the_next_rounds_prompts(
    persistent_instance, tmp_path, loopback_teacher
):
    """The real layout: raw_responses partitions written by the IO manager are what filtered_responses reads,
    and the next round's prompts are refined from the feedback of this round."""
    resources = resources_for(tmp_path) | {
        "teacher": TeacherResource(mode="remote", base_url=loopback_teacher.base_url, model="grok-test"),
    }
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate", "football"])
    for topic in ("climate", "football"):
        collected = materialize(
            [prompts, raw_responses],
            resources=resources,
            instance=persistent_instance,
            partition_key=collection_partition_key(topic, "2026-11-24"),
            run_config=GENERATIVE_ONLY,
        )
        assert collected.success
    raw = pd.concat(
        pd.read_parquet(p) for p in (tmp_path / "assets" / "raw_responses" / "2026-11-24").glob("*.parquet")
    )
    assert set(RAW_COLUMNS) <= set(raw.columns)
    filtered = materialize([filtered_responses, prompt_feedback], resources=resources, instance=persistent_instance)
    assert filtered.success
    frame = pd.read_parquet(tmp_path / "assets" / "filtered_responses.parquet")
    assert len(frame) == len(raw) and set(frame["topic"]) == {"climate", "football"}
    next_round = materialize(
        [prompts],
        resources=resources,
        instance=persistent_instance,
        partition_key=collection_partition_key("climate", "2026-11-25"),
        run_config=GENERATIVE_ONLY,
    )
    metadata = next_round.asset_materializations_for_node("prompts")[0].metadata
    assert metadata["refined_from_round"].value == "2026-11-24"
    assert set(metadata["refinement"].value["template_weights"]) == set(raw["template_id"])


def test_an_unreadable_feedback_history_fails_by_name(home, instance):
    (home / "assets").mkdir(exist_ok=True)
    (home / "assets" / "prompt_feedback.parquet").write_bytes(b"not parquet")
    result = run_filter(home, instance, assets=(filtered_responses, prompt_feedback))
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "cannot read prompt feedback" in failure.step_failure_data.error.message
    assert (home / "assets" / "prompt_feedback.parquet").read_bytes() == b"not parquet"


def test_the_filtering_stage_loads_beside_collection_without_a_cycle(tmp_path):
    from dagster import Definitions, load_assets_from_modules

    from assets import collection, filtering
    from opengrok_dagster.sensors import review_decisions_sensor

    defs = Definitions(
        assets=load_assets_from_modules([collection, filtering]),
        sensors=[review_decisions_sensor],
        resources=resources_for(tmp_path)
        | {"teacher": TeacherResource(mode="remote", base_url="http://127.0.0.1:9/v1", model="m")},
    )
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    upstream = {key.to_user_string() for key in graph.get(filtered_responses.key).parent_keys}
    assert upstream == {"raw_responses"}
    assert {key.to_user_string() for key in graph.get(prompt_feedback.key).parent_keys} == {"filtered_responses"}


def test_refiltering_the_same_rounds_gives_the_same_data_version(home, instance):
    versions = []
    for _ in range(2):
        result = run_filter(home, instance)
        versions.append(result.asset_materializations_for_node("filtered_responses")[0].tags["dagster/data_version"])
    assert versions[0] == versions[1]


def test_provider_refusals_reach_the_filter_as_refusals_and_the_feedback_as_refusal_rate(tmp_path, instance):
    """The client records a content filter, a structured refusal, null content and empty choices as anomalies
    (paid for, not retried); the filter rejects them as refusals and prompt_feedback counts them."""
    tweets = sentiment_tweets(12)
    frame = raw_frame(tweets, "climate", "2026-11-24").assign(
        template_id=["trends"] * 4 + ["sentiment"] * 8, anomaly=None
    )
    refused = {0: "content_filter", 1: "refusal", 2: "null_content", 3: "no_choices"}
    for index, anomaly in refused.items():
        frame.loc[index, ["response", "anomaly"]] = [None, anomaly]
    frame.loc[4, "anomaly"] = "overlong"
    write_raw(tmp_path, frame)
    result = run_filter(tmp_path, instance, assets=(filtered_responses, prompt_feedback))
    assert result.success
    filtered = pd.read_parquet(tmp_path / "assets" / "filtered_responses.parquet").set_index("request_id")
    for index in refused:
        assert (filtered.loc[f"req-{index}", "state"], list(filtered.loc[f"req-{index}", "reasons"])) == (
            "rejected",
            ["refusal"],
        )
    assert filtered.loc["req-4", "state"] == "needs_review" and "overlong" in filtered.loc["req-4", "reasons"]
    feedback = pd.read_parquet(tmp_path / "assets" / "prompt_feedback.parquet")
    templates = feedback[feedback["dimension"] == "template_id"].set_index("value")
    assert templates.loc["trends", "refusal_rate"] == 1.0 and templates.loc["sentiment", "refusal_rate"] == 0.0


def test_raw_responses_written_before_the_anomaly_column_still_filter(tmp_path, instance):
    write_raw(tmp_path, raw_frame(sentiment_tweets(6), "climate", "2026-11-24"))  # no anomaly column
    assert run_filter(tmp_path, instance).success
