"""Real posts to training examples, end to end on a real Dagster instance: posts -> annotation prompts ->
the reference teacher's answers (a TF-IDF+LR classifier on gold train behind an OpenAI-compatible loopback
server, not an LLM) -> filtered annotations -> mask tables, each example the evaluation's prompt and answer."""

import json

import pandas as pd
import pytest
from dagster import materialize
from transformers import AutoTokenizer

from assets.collection import prompts, raw_responses
from assets.filtering import filtered_responses
from assets.masks import mask_tables
from assets.posts import posts
from opengrok_dagster.offline.reference_teacher import ReferenceTeacher
from opengrok_dagster.partitions import collection_partition_key, post_shard_partitions, topic_partitions
from opengrok_dagster.posts.leaks import normalise_post
from opengrok_dagster.tasks.datasets import read_tweeteval
from opengrok_dagster.tasks.formats import task_format
from resources import OpenGrokPaths, ParquetIOManager, StudentResource, TeacherResource
from tests.conftest import SHARED_DATA


ROUND = "2026-12-01"
TASKS = ["tweeteval_sentiment", "tweet_topic"]


@pytest.mark.integration
def test_annotated_posts_become_training_examples_the_evaluation_would_ask(
    persistent_instance, tmp_path, offline_model
):
    (tmp_path / "topics.yaml").write_text("topics:\n  - key: everything\n    name: everyday life\n")
    (tmp_path / "posts.yaml").write_text(
        "shards:\n  - key: semeval2015-train\n    path: data:semeval2017_task4a/twitter-2015train-A.tsv\n"
    )
    resources = {
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(tmp_path / "topics.yaml")),
        "student": StudentResource(),
    }
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["everything"])
    persistent_instance.add_dynamic_partitions(post_shard_partitions.name, ["semeval2015-train"])
    posts_config = {"catalogue": str(tmp_path / "posts.yaml"), "data_dir": str(SHARED_DATA)}
    assert materialize(
        [posts],
        instance=persistent_instance,
        partition_key="semeval2015-train",
        resources=resources,
        run_config={"ops": {"posts": {"config": posts_config}}},
    ).success

    grid = {
        "annotation_share": 1.0,
        "annotation_tasks": TASKS,
        "base_per_topic": 40,
        "style_per_topic": 0,
        "adversarial_per_topic": 0,
    }
    with ReferenceTeacher.fit(SHARED_DATA, tuple(TASKS)) as teacher:
        collected = materialize(
            [prompts, raw_responses],
            instance=persistent_instance,
            partition_key=collection_partition_key("everything", ROUND),
            resources=resources
            | {"teacher": TeacherResource(mode="remote", base_url=teacher.base_url, model="reference")},
            run_config={"ops": {"prompts": {"config": grid}}},
        )
    assert collected.success
    raw = pd.read_parquet(tmp_path / "assets" / "raw_responses" / ROUND / "everything.parquet")
    # share 1: as many annotation prompts as the grid would have drawn (its 30 cells for one topic without events)
    assert (
        len(raw) == 30 and (raw["variant"] == "annotation").all() and (raw["response_format"] == "json_schema").all()
    )

    prepared = materialize(
        [filtered_responses, mask_tables],
        instance=persistent_instance,
        resources=resources,
        run_config={"ops": {"mask_tables": {"config": {"max_length": 256}}}},
    )
    assert prepared.success and all(check.passed for check in prepared.get_asset_check_evaluations())
    filtered = pd.read_parquet(tmp_path / "assets" / "filtered_responses.parquet")
    kept = filtered[filtered["state"] == "kept"]
    # Every answer of the reference teacher is valid, and 30 annotations are too few for confident learning to
    # judge (label_issue_min_rows): all are kept.
    assert len(kept) == 30
    # a share of the annotations is held out of training for the student-teacher agreement (annotation_heldout_fraction)
    assert set(kept["task"]) == set(TASKS) and set(kept["split"]) <= {"train", "validation", "heldout"}
    for row in kept.itertuples():
        fmt = task_format(row.task)
        post = row.prompt.partition("\nPost: ")[2]
        assert [row.system_prompt, row.prompt] == [m["content"] for m in fmt.messages(post)]
        assert fmt.parse(row.response, post).reason is None
    val = {normalise_post(t) for t in read_tweeteval(SHARED_DATA / "tweeteval" / "sentiment" / "val").texts}
    assert not any(normalise_post(row.prompt.partition("\nPost: ")[2]) in val for row in kept.itertuples())
    metadata = prepared.asset_materializations_for_node("filtered_responses")[0].metadata
    assert set(metadata["annotations_by_task"].value) == set(TASKS)

    table = pd.read_parquet(tmp_path / "assets" / "mask_tables.parquet")
    assert len(table) == int((kept["split"] != "heldout").sum())
    tokenizer = AutoTokenizer.from_pretrained(str(offline_model))
    first = kept.set_index("example_id").loc[table["example_id"].iloc[0]]
    messages = [{"role": "system", "content": first["system_prompt"]}, {"role": "user", "content": first["prompt"]}]
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": first["response"]}], tokenize=True, return_dict=True
    )["input_ids"]
    assert list(table["input_ids"].iloc[0]) == full
    assert json.loads(first["scores"])["read_as"] == "json"
