"""Annotation prompts: asked as the evaluation asks, a share of the grid, structured output with its fallback
chain (json_schema -> json_object -> text) recorded per response."""

import asyncio
import json
import sqlite3

import httpx
import pandas as pd
import pytest
import respx

from opengrok_dagster.collect.annotation import (
    annotation_count,
    annotation_messages,
    build_annotation_prompts,
    complete_prompt,
    posts_for_topic,
    response_format_field,
)
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.store import ResponseKey, ResponseStore
from opengrok_dagster.settings import CONFIG_DIR
from opengrok_dagster.tasks.formats import task_format


BASE = "http://teacher.test/v1"
URL = f"{BASE}/chat/completions"
FAST = ClientLimits(max_attempts=2, backoff_initial_s=0.001, backoff_max_s=0.01, timeout_s=0.5)


def post_frame(n=6, topic=None):
    return pd.DataFrame(
        {
            "post_id": [f"s:{i}" for i in range(n)],
            "text": [f"post number {i} about Paris" for i in range(n)],
            "topic": [topic] * n,
            "platform": ["Reddit"] * n,
            "created_at": [None] * n,
            "shard": ["s"] * n,
            "source": ["f.jsonl"] * n,
        }
    )


def test_annotation_prompts_ask_as_the_evaluation_does_plus_the_json_shape():
    rows = build_annotation_prompts(post_frame(), "music", 8, ("tweeteval_sentiment", "wnut17"), "json_schema", 0)
    assert len(rows) == 8 and len({r["prompt_id"] for r in rows}) == 8
    assert rows == build_annotation_prompts(
        post_frame(), "music", 8, ("tweeteval_sentiment", "wnut17"), "json_schema", 0
    )
    for row in rows:
        fmt = task_format(row["task"])
        asked = fmt.messages(row["post_text"])
        assert row["system_prompt"] == asked[0]["content"]
        assert row["prompt"] == f"{asked[1]['content']}\n{fmt.json_instruction()}"
        assert row["variant"] == "annotation" and row["template_id"] == f"annotate:{row['task']}"
    text_rows = build_annotation_prompts(post_frame(), "music", 2, ("tweet_topic",), "text", 0)
    assert [r["prompt"] for r in text_rows] == [
        task_format("tweet_topic").messages(r["post_text"])[1]["content"] for r in text_rows
    ]


def test_share_of_annotation_prompts_and_bad_settings():
    assert annotation_count(12, 0) == 0 and annotation_count(12, 0.5) == 12 and annotation_count(12, 0.25) == 4
    assert annotation_count(12, 1) == 12
    with pytest.raises(ValueError, match=r"annotation_share must be in \[0, 1\], got 1.5"):
        annotation_count(12, 1.5)
    with pytest.raises(
        ValueError, match=r"unknown structured_output 'xml'; choose from json_schema, json_object, text"
    ):
        build_annotation_prompts(post_frame(), "music", 2, ("tweet_topic",), "xml", 0)
    with pytest.raises(ValueError, match=r"no annotation format for task 'emotion'"):
        build_annotation_prompts(post_frame(), "music", 2, ("emotion",), "text", 0)


def test_each_untopiced_post_belongs_to_one_topic_and_topiced_posts_to_theirs():
    frame = pd.concat([post_frame(40), post_frame(3, "music").assign(post_id=lambda f: "m" + f["post_id"])])
    topics = ["music", "sports", "climate"]
    parts = [posts_for_topic(frame, t, topics) for t in topics]
    assert sum(map(len, parts)) == len(frame) and not set(parts[0]["post_id"]) & set(parts[1]["post_id"])
    assert set(frame[frame["topic"] == "music"]["post_id"]) <= set(parts[0]["post_id"])


def test_response_format_field_carries_the_strict_schema():
    fmt = task_format("btc")
    field = response_format_field(fmt, "json_schema")
    assert field["type"] == "json_schema" and field["json_schema"]["strict"] is True
    assert field["json_schema"]["schema"] == fmt.json_schema()
    assert (
        response_format_field(fmt, "json_object") == {"type": "json_object"}
        and response_format_field(fmt, "text") is None
    )
    assert "JSON object" in annotation_messages(fmt, "a post", "json_object")[1]["content"]


def answer(content):
    body = {
        "id": "c",
        "model": "m",
        "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    return httpx.Response(200, json=body)


def ask(row):
    async def go():
        async with TeacherClient(TeacherEndpoint(BASE, "grok-test", "k"), limits=FAST) as client:
            return await complete_prompt(client, row)

    return asyncio.run(go())


@respx.mock
def test_an_endpoint_refusing_json_schema_is_asked_with_json_object_and_the_mode_is_recorded(tmp_path):
    def reply(request):
        sent = json.loads(request.content).get("response_format")
        if sent and sent["type"] == "json_schema":
            return httpx.Response(400, json={"error": "response_format json_schema is not supported"})
        return answer('{"label": "positive"}')

    route = respx.post(URL).mock(side_effect=reply)
    row = build_annotation_prompts(post_frame(1), "music", 1, ("tweeteval_sentiment",), "json_schema", 0)[0]
    result = ask(row)
    assert result.ok and result.response_format == "json_object" and result.text == '{"label": "positive"}'
    assert [json.loads(c.request.content)["response_format"]["type"] for c in route.calls] == [
        "json_schema",
        "json_object",
    ]
    store = ResponseStore(tmp_path / "responses.sqlite")
    key = ResponseKey("grok-test", "s", "2026-12-01")
    store.responses.record(key, row["prompt_id"], "music", result)
    assert store.responses.fetch(key, [row["prompt_id"]])[0]["response_format"] == "json_object"


@respx.mock
def test_an_endpoint_refusing_every_structured_mode_ends_in_free_text():
    route = respx.post(URL).mock(
        side_effect=lambda r: httpx.Response(422) if "response_format" in json.loads(r.content) else answer("positive")
    )
    row = build_annotation_prompts(post_frame(1), "music", 1, ("tweeteval_sentiment",), "json_schema", 0)[0]
    result = ask(row)
    assert result.ok and result.response_format == "text" and len(route.calls) == 3


@respx.mock
def test_generative_prompts_send_no_response_format():
    route = respx.post(URL).mock(return_value=answer("a post"))
    result = ask({"system_prompt": "s", "prompt": "write a post", "structured_output": float("nan")})
    assert result.ok and result.response_format is None
    assert "response_format" not in json.loads(route.calls[0].request.content)


def test_a_store_written_before_annotation_prompts_gains_the_column(tmp_path):
    path = tmp_path / "responses.sqlite"
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE responses (prompt_id TEXT NOT NULL, teacher_model TEXT NOT NULL, sampling_key TEXT "
        "NOT NULL, round TEXT NOT NULL, topic TEXT NOT NULL, text TEXT, finish_reason TEXT, model TEXT, "
        "prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL NOT NULL, latency_s REAL NOT NULL, "
        "attempts INTEGER NOT NULL, request_id TEXT, error TEXT, status_code INTEGER, collected_at TEXT "
        "NOT NULL, PRIMARY KEY (prompt_id, teacher_model, sampling_key, round))"
    )
    connection.commit()
    connection.close()
    ResponseStore(path)
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(responses)")]
    assert columns[-3:] == ["response_format", "run_id", "batch_id"]  # and the spend report's provenance


def test_prompts_asset_mixes_annotation_prompts_from_posts_and_records_the_answering_mode(
    persistent_instance, tmp_path, loopback_teacher
):
    from dagster import materialize

    from assets.collection import prompts, raw_responses
    from assets.posts import posts
    from opengrok_dagster.partitions import collection_partition_key, post_shard_partitions, topic_partitions
    from resources import OpenGrokPaths, ParquetIOManager, TeacherResource

    (tmp_path / "mine.jsonl").write_text(
        "".join(json.dumps({"text": f"my post {i} on the derby"}) + "\n" for i in range(60))
    )
    (tmp_path / "posts.yaml").write_text("shards:\n  - key: mine\n    path: mine.jsonl\n")
    resources = {
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
        "teacher": TeacherResource(mode="remote", base_url=loopback_teacher.base_url, model="grok-test"),
    }
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
    persistent_instance.add_dynamic_partitions(post_shard_partitions.name, ["mine"])
    grid = {"ops": {"prompts": {"config": {"annotation_share": 0.5}}}}
    key = collection_partition_key("climate", "2026-11-24")
    without_posts = materialize(
        [prompts],
        resources=resources,
        instance=persistent_instance,
        partition_key=key,
        run_config=grid,
        raise_on_error=False,
    )
    message = without_posts.get_step_failure_events()[0].step_failure_data.error.message
    assert "annotation_share > 0 but no posts shard is materialised; materialise posts" in message
    assert materialize(
        [posts],
        resources=resources,
        instance=persistent_instance,
        partition_key="mine",
        run_config={"ops": {"posts": {"config": {"catalogue": str(tmp_path / "posts.yaml")}}}},
    ).success
    result = materialize(
        [prompts, raw_responses], resources=resources, instance=persistent_instance, partition_key=key, run_config=grid
    )
    assert result.success
    frame = pd.read_parquet(tmp_path / "assets" / "raw_responses" / "2026-11-24" / "climate.parquet")
    annotated = frame[frame["variant"] == "annotation"]
    assert len(annotated) == 12 and len(frame) == 24 and annotated["post_id"].str.startswith("mine:").all()
    assert (annotated["response_format"] == "json_schema").all() and frame.loc[
        frame["variant"] != "annotation", "response_format"
    ].isna().all()
    assert sum("Answer with a JSON object only" in r.user_prompt for r in loopback_teacher.requests) == 12
