"""The posts source: shards from files, globs and the shared data; one-line errors; evaluation posts kept out of
posts and out of the gold TF-IDF baseline's training data."""

import json

import pandas as pd
import pytest
from dagster import DagsterInstance, Definitions, materialize

from assets.posts import posts
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.runner import Evaluation
from opengrok_dagster.partitions import post_shard_partitions
from opengrok_dagster.posts.leaks import EvalPosts, leak_counts, load_eval_posts, normalise_post
from opengrok_dagster.posts.sources import PostsError, PostShard, load_posts_catalogue, read_shard
from opengrok_dagster.settings import CONFIG_DIR
from opengrok_dagster.tasks.datasets import read_semeval_tsv, read_tweeteval
from opengrok_dagster.tasks.schemas import POST_COLUMNS
from resources import ParquetIOManager
from tests.conftest import SHARED_DATA


def test_jsonl_csv_and_parquet_shards_read_text_and_optional_columns(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"id": 7, "text": " first post ", "platform": "Reddit"})
        + "\n\n"
        + json.dumps({"id": 8, "text": ""})
        + "\n"
    )
    pd.DataFrame({"body": ["second post", "second post", "third"], "topic": ["music", None, "sports"]}).to_csv(
        tmp_path / "b.csv", index=False
    )
    pd.DataFrame({"text": ["fourth"], "created_at": ["2026-11-30T10:00:00Z"]}).to_parquet(tmp_path / "c.parquet")
    first = read_shard(PostShard(key="mine", path="a.jsonl"), tmp_path)
    assert list(first.columns) == list(POST_COLUMNS)
    assert first[["post_id", "text", "platform"]].values.tolist() == [["mine:7", "first post", "Reddit"]]
    second = read_shard(
        PostShard(key="csv", path=str(tmp_path / "b.csv"), text_column="body", platform="Reddit"), tmp_path
    )
    assert second["text"].tolist() == ["second post", "third"]  # the repeated text is kept once
    assert second["topic"].tolist() == ["music", "sports"] and set(second["platform"]) == {"Reddit"}
    parquet = read_shard(PostShard(key="pq", path="c.parquet"), tmp_path)
    assert (
        parquet["created_at"].tolist() == ["2026-11-30T10:00:00Z"] and parquet["post_id"].str.startswith("pq:").all()
    )


def test_a_glob_reads_every_matching_file(tmp_path):
    for day in ("01", "02"):
        (tmp_path / f"posts-{day}.jsonl").write_text(json.dumps({"text": f"post of day {day}"}) + "\n")
    frame = read_shard(PostShard(key="days", path="posts-*.jsonl"), tmp_path)
    assert frame["text"].tolist() == ["post of day 01", "post of day 02"] and frame["source"].nunique() == 2


@pytest.mark.parametrize(
    "setup, shard, message",
    [
        (
            lambda d: None,
            PostShard(key="gone", path="nowhere/*.jsonl"),
            r"^posts shard gone: no file matches .*nowhere/\*\.jsonl; fix the shard's path in the posts catalogue$",
        ),
        (
            lambda d: (d / "x.csv").write_text("body\nhello\n"),
            PostShard(key="x", path="x.csv"),
            r"^posts shard x: .*x.csv has columns \['body'\] but no text column 'text'; set text_column in the posts",
        ),
        (
            lambda d: (d / "e.jsonl").write_text(json.dumps({"text": "  "}) + "\n"),
            PostShard(key="e", path="e.jsonl"),
            r"^posts shard e: .*e.jsonl hold no posts with text; check the files or the text_column$",
        ),
        (
            lambda d: (d / "n.txt").write_text("hi\n"),
            PostShard(key="n", path="n.txt"),
            r"^posts shard n: cannot tell the format of .*n.txt from its suffix; set format",
        ),
    ],
)
def test_bad_shards_fail_with_one_line(tmp_path, setup, shard, message):
    setup(tmp_path)
    with pytest.raises(PostsError, match=message):
        read_shard(shard, tmp_path)


def test_catalogue_errors_name_the_entry(tmp_path):
    catalogue = tmp_path / "posts.yaml"
    catalogue.write_text("shards:\n  - key: Bad Key\n    path: a.jsonl\n")
    with pytest.raises(PostsError, match=r"posts catalogue .*posts.yaml: entry 0: shard key"):
        load_posts_catalogue(catalogue)
    catalogue.write_text("shards:\n  - key: a\n    path: a.jsonl\n  - key: a\n    path: b.jsonl\n")
    with pytest.raises(PostsError, match=r"shard key 'a' appears twice"):
        load_posts_catalogue(catalogue)


def test_default_catalogue_reads_only_texts_of_the_shared_train_splits():
    shards = load_posts_catalogue(CONFIG_DIR / "posts.yaml")
    assert {s.key for s in shards} == {
        "semeval2013-train",
        "semeval2015-train",
        "semeval2016-train",
        "wnut17-train",
        "btc-train",
        "tweettopic-train",
    }
    wnut = read_shard(next(s for s in shards if s.key == "wnut17-train"), CONFIG_DIR, str(SHARED_DATA))
    assert len(wnut) > 3000 and not any(tag in " ".join(wnut["text"][:50]) for tag in ("B-person", "\tO"))


def test_normalisation_matches_tweeteval_rewrites_and_finds_the_known_leak():
    assert normalise_post("Dear @Microsoft, WOW\\u2019s new http://t.co/x Office!!") == normalise_post(
        "dear @user wow’s new office"
    )
    val = read_tweeteval(SHARED_DATA / "tweeteval" / "sentiment" / "val").texts
    eval_posts = load_eval_posts(["tweeteval_sentiment"], SHARED_DATA)
    train = read_semeval_tsv([SHARED_DATA / "semeval2017_task4a" / f"twitter-{y}train-A.tsv" for y in (2013, 2016)])
    assert len(val) == 2000
    # The TweetEval val posts among the gold baseline's SemEval 2013 + 2016 train files: 633 distinct texts repeat
    # one exactly (639 before whole mention tokens were replaced), and 48 posts more are near-duplicates of one.
    leaks = eval_posts.matches(train.texts)
    assert len({normalise_post(t) for t, leak in zip(train.texts, leaks) if leak and leak.kind == "exact"}) == 633
    assert leak_counts(leaks) == {"exact": 641, "near_duplicate": 48}


def test_retweet_prefixes_and_whole_mention_tokens_are_normalised_away():
    assert normalise_post("RT @news_desk: RT @ap: Big storm hits the coast") == "big storm hits the coast"
    assert normalise_post("thanks @Some.Body's team!") == normalise_post("thanks @user team")
    assert normalise_post("mail me at a@b.com") != normalise_post("mail me at a @user")  # not a mention token


def test_near_duplicates_of_an_eval_post_are_caught_and_unrelated_posts_are_not():
    eval_posts = EvalPosts({"val": ["the new phone battery dies after two hours of light use every single day"]})
    leaks = eval_posts.matches(
        [
            "RT @fan: The NEW phone battery dies after two hours of light use, every single day!!",  # exact
            "ugh the new phone battery dies after two hours of light use every single day lol",  # Jaccard 13/15
            "the new phone is great and the battery lasts all day",  # shares words, Jaccard < 0.7
            "",
        ]
    )
    assert [leak and leak.kind for leak in leaks] == ["exact", "near_duplicate", None, None]
    assert leaks[1].split == "val" and leak_counts(leaks) == {"exact": 1, "near_duplicate": 1}


def posts_resources(tmp_path):
    return {"io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets"))}


def test_posts_asset_drops_eval_posts_per_shard_and_the_check_blocks_when_told_not_to(tmp_path):
    val = read_tweeteval(SHARED_DATA / "tweeteval" / "sentiment" / "val").texts
    (tmp_path / "mine.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ["my own post", val[5], "another"])
    )
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": "a second shard"}) + "\n")
    catalogue = tmp_path / "posts.yaml"
    catalogue.write_text("shards:\n  - key: mine\n    path: mine.jsonl\n  - key: other\n    path: other.jsonl\n")
    config = {
        "catalogue": str(catalogue),
        "data_dir": str(SHARED_DATA),
        "eval_tasks": ["tweeteval_sentiment", "wnut17"],
    }
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(post_shard_partitions.name, ["mine", "other"])
        result = materialize(
            [posts],
            instance=instance,
            partition_key="mine",
            resources=posts_resources(tmp_path),
            run_config={"ops": {"posts": {"config": config}}},
        )
        assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
        frame = pd.read_parquet(tmp_path / "assets" / "posts" / "mine.parquet")
        assert frame["text"].tolist() == ["my own post", "another"]
        metadata = result.asset_materializations_for_node("posts")[0].metadata
        assert metadata["eval_posts_dropped"].value == 1 and metadata["dagster/row_count"].value == 2
        # Another shard is its own partition: materialising it leaves the first one as it was.
        before = (tmp_path / "assets" / "posts" / "mine.parquet").stat().st_mtime_ns
        assert materialize(
            [posts],
            instance=instance,
            partition_key="other",
            resources=posts_resources(tmp_path),
            run_config={"ops": {"posts": {"config": config}}},
        ).success
        assert (tmp_path / "assets" / "posts" / "mine.parquet").stat().st_mtime_ns == before
        kept = materialize(
            [posts],
            instance=instance,
            partition_key="mine",
            resources=posts_resources(tmp_path),
            run_config={"ops": {"posts": {"config": config | {"drop_eval_posts": False}}}},
            raise_on_error=False,
        )
        check = kept.get_asset_check_evaluations()[0]
        assert not check.passed and check.metadata["eval_posts"].value == 1


def test_an_empty_shard_fails_the_run_with_one_line(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    catalogue = tmp_path / "posts.yaml"
    catalogue.write_text("shards:\n  - key: empty\n    path: empty.jsonl\n")
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(post_shard_partitions.name, ["empty"])
        result = materialize(
            [posts],
            instance=instance,
            partition_key="empty",
            resources=posts_resources(tmp_path),
            run_config={"ops": {"posts": {"config": {"catalogue": str(catalogue)}}}},
            raise_on_error=False,
        )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "posts shard empty: " in failure and "hold no posts with text" in failure
    assert not (tmp_path / "assets" / "posts" / "empty.parquet").exists()


def test_gold_baseline_leaves_out_train_posts_that_are_eval_posts(tmp_path):
    folder = tmp_path / "tweeteval" / "sentiment"
    folder.mkdir(parents=True)
    (folder / "mapping.txt").write_text("0\tnegative\n1\tneutral\n2\tpositive\n")
    (folder / "val_text.txt").write_text("what a great day\nawful service @shop\nthe bus is at noon\n")
    (folder / "val_labels.txt").write_text("2\n0\n1\n")
    train = [
        "1\tpositive\tWhat a GREAT day!!",
        "2\tnegative\tbad bad",
        "3\tneutral\tit is tuesday",
        "4\tpositive\tlovely",
    ]
    (tmp_path / "train.tsv").write_text("\n".join(train) + "\n")
    config = EvaluationConfig(
        tasks=("tweeteval_sentiment",),
        data_dir=str(tmp_path),
        train_paths={"tweeteval_sentiment": ("train.tsv",)},
        resamples=100,
        min_items={"single": 1},  # a three-post split: scored, so that the leak check runs
    )
    results = Evaluation(config, None, [], log=lambda _: None).run(None)
    assert "1 posts of the train split" in " ".join(results.tasks[0].notes)
    assert "left out of the TF-IDF baselines' training data" in " ".join(results.tasks[0].notes)


def test_sensor_adds_a_partition_for_each_new_catalogue_shard(persistent_instance, tmp_path, monkeypatch):
    from dagster import build_sensor_context

    from opengrok_dagster.sensors import posts_catalogue_sensor

    catalogue = tmp_path / "posts.yaml"
    catalogue.write_text("shards:\n  - key: a\n    path: a.jsonl\n  - key: b\n    path: b.jsonl\n")
    monkeypatch.setenv("OPENGROK_POSTS_CATALOGUE", str(catalogue))
    persistent_instance.add_dynamic_partitions(post_shard_partitions.name, ["a"])
    [request] = posts_catalogue_sensor(build_sensor_context(instance=persistent_instance)).dynamic_partitions_requests
    assert list(request.partition_keys) == ["b"]
    persistent_instance.add_dynamic_partitions(post_shard_partitions.name, ["b"])
    assert posts_catalogue_sensor(build_sensor_context(instance=persistent_instance)).skip_message


def test_a_hub_split_is_a_shard_and_its_label_column_is_never_read(tmp_path, monkeypatch):
    import datasets as hf_datasets

    monkeypatch.setattr(hf_datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    repository = tmp_path / "my-posts"
    (repository / "data").mkdir(parents=True)
    columns = {"text": ["hub post one", "hub post two"], "label": [0, 1], "platform": ["Reddit", "X"]}
    hf_datasets.Dataset.from_dict(columns).to_parquet(repository / "data" / "train-00000-of-00001.parquet")
    frame = read_shard(PostShard(key="hub", path=f"hf:{repository}::train"), tmp_path)
    assert frame["text"].tolist() == ["hub post one", "hub post two"] and frame["platform"].tolist() == ["Reddit", "X"]
    assert frame["source"].eq(f"hf:{repository}::train").all() and "label" not in frame.columns
    with pytest.raises(
        PostsError, match=r"^posts shard hub: hf:.*::nope could not be loaded from the Hugging Face hub"
    ):
        read_shard(PostShard(key="hub", path=f"hf:{repository}::nope"), tmp_path)


def test_the_default_semeval_shard_loads_through_its_job_without_its_tweeteval_val_posts(tmp_path):
    from opengrok_dagster.jobs import posts_job

    job = Definitions(assets=[posts], jobs=[posts_job], resources=posts_resources(tmp_path)).resolve_job_def(
        posts_job.name
    )
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(post_shard_partitions.name, ["semeval2016-train"])
        result = job.execute_in_process(
            instance=instance,
            partition_key="semeval2016-train",
            run_config={"ops": {"posts": {"config": {"data_dir": str(SHARED_DATA)}}}},
        )
    metadata = result.asset_materializations_for_node("posts")[0].metadata
    assert metadata["eval_posts_dropped"].value == 265 and metadata["dagster/row_count"].value == 5975 - 265
    by_split = metadata["eval_posts_by_split"].value
    assert by_split[f"semeval_sentiment ({SHARED_DATA / 'semeval2017_task4a' / 'twitter-2016devtest-A.tsv'})"] == 4
    # 264 before whole mention tokens were replaced; this shard holds no near-duplicate of an eval post
    assert metadata["eval_posts_by_kind"].value == {"exact": 265, "near_duplicate": 0}


def test_without_a_data_directory_posts_load_and_say_which_eval_splits_went_unchecked(tmp_path, monkeypatch):
    import opengrok_dagster.tasks.datasets as datasets

    monkeypatch.delenv("OPENGROK_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "SHARED_DATA_FALLBACK", tmp_path / "no-such-dir")
    (tmp_path / "mine.jsonl").write_text(json.dumps({"text": "my own post"}) + "\n")
    (tmp_path / "posts.yaml").write_text("shards:\n  - key: mine\n    path: mine.jsonl\n")
    config = {"catalogue": str(tmp_path / "posts.yaml"), "eval_tasks": ["tweeteval_sentiment", "wnut17"]}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(post_shard_partitions.name, ["mine"])
        result = materialize(
            [posts],
            instance=instance,
            partition_key="mine",
            resources=posts_resources(tmp_path),
            run_config={"ops": {"posts": {"config": config}}},
        )
    metadata = result.asset_materializations_for_node("posts")[0].metadata
    assert metadata["eval_splits_checked"].value == 0
    assert metadata["eval_tasks_unchecked"].value == "tweeteval_sentiment, wnut17"


def test_the_cli_loads_every_catalogue_shard_for_the_annotation_prompts(tmp_path, monkeypatch):
    from opengrok_dagster.cli.local_instance import open_instance
    from opengrok_dagster.cli.pipeline import StageRunner, posts_stage, resolve_jobs
    from opengrok_dagster.definitions import build_definitions

    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "first shard post"}) + "\n")
    (tmp_path / "b.csv").write_text("text\nsecond shard post\n")
    (tmp_path / "posts.yaml").write_text("shards:\n  - key: a\n    path: a.jsonl\n  - key: b\n    path: b.csv\n")
    monkeypatch.setenv("OPENGROK_POSTS_CATALOGUE", str(tmp_path / "posts.yaml"))
    instance = open_instance()
    runner = StageRunner(instance, resolve_jobs(build_definitions()), run_config={})
    assert runner.run([posts_stage(instance)])
    assert sorted(instance.get_dynamic_partitions(post_shard_partitions.name)) == ["a", "b"]
    stored = tmp_path / "home" / "assets" / "posts"
    assert pd.read_parquet(stored / "b.parquet")["text"].tolist() == ["second shard post"]
    (tmp_path / "b.csv").write_text("body\nno text column\n")
    assert not runner.run([posts_stage(instance)])


def test_a_file_in_another_encoding_names_the_byte_offset_and_the_setting_then_reads_with_it(tmp_path):
    (tmp_path / "export.csv").write_bytes("text\nfirst post\ncaf\u00e9 au lait\n".encode("cp1252"))
    with pytest.raises(PostsError) as error:
        read_shard(PostShard(key="sheet", path="export.csv"), tmp_path)
    message = str(error.value)
    assert (
        message.startswith("posts shard sheet: ") and "export.csv is not utf-8: byte 0xe9 at byte offset 19" in message
    )
    assert "(line 3)" in message and "set `encoding: cp1252`" in message and "\n" not in message
    frame = read_shard(PostShard(key="sheet", path="export.csv", encoding="cp1252"), tmp_path)
    assert frame["text"].tolist() == ["first post", "caf\u00e9 au lait"]


def test_a_utf8_byte_order_mark_is_skipped_and_an_unknown_encoding_is_refused_in_the_catalogue(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "hello"}).encode() + b"\n")
    assert read_shard(PostShard(key="bom", path="bom.jsonl"), tmp_path)["text"].tolist() == ["hello"]
    catalogue = tmp_path / "posts.yaml"
    catalogue.write_text("shards:\n  - key: a\n    path: a.jsonl\n    encoding: klingon\n")
    with pytest.raises(PostsError, match=r"entry 0: encoding: .*unknown encoding 'klingon'; use a Python codec name"):
        load_posts_catalogue(catalogue)


def test_an_invalid_jsonl_line_names_its_number_and_on_bad_line_skip_counts_it(tmp_path):
    lines = [json.dumps({"id": 1, "text": "one"}), '{"id": 2, "text": "cut off', "[3]", json.dumps({"text": "four"})]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PostsError, match=r"^posts shard p: .*p.jsonl line 2 is not a JSON object \(Unterminated .*"
                       r"set `on_bad_line: skip` for this shard"):  # fmt: skip
        read_shard(PostShard(key="p", path="p.jsonl"), tmp_path)
    skipped = []
    frame = read_shard(PostShard(key="p", path="p.jsonl", on_bad_line="skip"), tmp_path, skipped=skipped)
    assert frame["text"].tolist() == ["one", "four"]
    assert [(s.line, s.reason) for s in skipped] == [(2, skipped[0].reason), (3, "a JSON list, not an object")]


def test_a_csv_row_with_too_many_fields_stops_naming_its_line_or_is_skipped(tmp_path):
    (tmp_path / "r.csv").write_text("id,text\n1,fine\n2,bad,extra\n3,also fine\n")
    with pytest.raises(PostsError, match=r"r.csv: .*Expected 2 fields in line 3, saw 3; fix the row, or set"):
        read_shard(PostShard(key="r", path="r.csv"), tmp_path)
    skipped = []
    frame = read_shard(PostShard(key="r", path="r.csv", on_bad_line="skip"), tmp_path, skipped=skipped)
    assert frame["text"].tolist() == ["fine", "also fine"] and len(skipped) == 1


def test_the_posts_asset_counts_skipped_lines_in_its_metadata(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "one"}) + "\n{broken\n" + json.dumps({"text": "two"}) + "\n")
    catalogue = tmp_path / "posts.yaml"
    catalogue.write_text("shards:\n  - key: p\n    path: p.jsonl\n    on_bad_line: skip\n")
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(post_shard_partitions.name, ["p"])
        result = materialize(
            [posts],
            instance=instance,
            partition_key="p",
            resources=posts_resources(tmp_path),
            run_config={"ops": {"posts": {"config": {"catalogue": str(catalogue)}}}},
        )
    metadata = result.asset_materializations_for_node("posts")[0].metadata
    assert metadata["bad_lines_skipped"].value == 1 and metadata["dagster/row_count"].value == 2
    assert "| 2 |" in metadata["skipped_lines"].value and metadata["encoding"].value == "utf-8"
