"""promoted_student and post_labels as Dagster assets: the blocking check, the manual choice, the refusals."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from dagster import AssetSpec, Failure, asset, materialize

from assets.labelling import post_labels, posts_unchanged_guard, promoted_student
from opengrok_dagster.cli import main
from opengrok_dagster.evaluation.local import LocalStudent, find_checkpoints
from opengrok_dagster.labelling.labeller import LabellingConfig, PostLabeller, label_posts
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.partitions import mask_mode_partitions, post_shard_partitions
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths, ParquetIOManager, StudentResource
from tests.conftest import adapters, write_adapter
from tests.test_eval_report import write_manifests
from tests.test_labelling import POSTS, choice, report


UPSTREAM = [
    AssetSpec("eval_report"),
    AssetSpec("lora_checkpoint", partitions_def=mask_mode_partitions),
    AssetSpec("posts", partitions_def=post_shard_partitions),
]
SIGNIFICANT = report(("lora:none", 0.031, -0.005, 0.072), ("lora:hard", 0.06, 0.02, 0.1))
NOT_SIGNIFICANT = report(("lora:none", 0.031, -0.005, 0.072), ("lora:hard", 0.01, -0.02, 0.04))


@pytest.fixture
def home(tmp_path, checkpoints_home, instance):
    assets_dir = HomeLayout(checkpoints_home).assets_dir
    (assets_dir / "lora_checkpoint").mkdir(parents=True)
    (assets_dir / "posts").mkdir()
    write_manifests(assets_dir, checkpoints_home)
    POSTS.to_parquet(assets_dir / "posts" / "mine.parquet")
    instance.add_dynamic_partitions(post_shard_partitions.name, ["mine"])
    return checkpoints_home


def resources(home, student):
    return {
        "io_manager": ParquetIOManager(base_dir=str(HomeLayout(home).assets_dir)),
        "paths": OpenGrokPaths(home=str(home), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
        "student": StudentResource(model=str(student)),
    }


def promote(home, instance, student, report_frame):
    report_frame.to_parquet(HomeLayout(home).asset_path("eval_report"))
    return materialize(
        UPSTREAM + [promoted_student], instance=instance, resources=resources(home, student), raise_on_error=False
    )


def label(home, instance, student, **settings):
    return materialize(
        [*UPSTREAM, AssetSpec("promoted_student"), post_labels],
        instance=instance,
        partition_key="mine",
        resources=resources(home, student),
        run_config={"ops": {"post_labels": {"config": {"chunk_posts": 4, "torch_threads": 1} | settings}}},
        raise_on_error=False,
    )


def failure(result) -> str:
    """The one-line description of the run's failed step."""
    [event] = result.get_step_failure_events()
    return event.step_failure_data.user_failure_data.description


@pytest.mark.integration
def test_the_earning_adapter_is_promoted_and_labels_the_shard(home, instance, tiny_student):
    result = promote(home, instance, tiny_student, SIGNIFICANT)
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.passed and "lora:hard (calibrated) +0.060 [0.020, 0.100]" in check.description
    record = pd.read_parquet(HomeLayout(home).asset_path("promoted_student")).iloc[0]
    assert (record["mask_mode"], record["how"], record["adapter_dir"]) == ("hard", "rule", str(adapters(home)["hard"]))
    metadata = result.asset_materializations_for_node("promoted_student")[0].metadata
    assert metadata["lineage"].value["mask_mode"] == "hard"

    labelled = label(home, instance, tiny_student, sample=0)
    assert labelled.success
    frame = pd.read_parquet(HomeLayout(home).asset_path("post_labels", "mine"))
    assert frame["post_id"].tolist() == POSTS["post_id"].tolist()
    assert set(frame["model_digest"]) == {record["adapter_version"]}
    metadata = labelled.asset_materializations_for_node("post_labels")[0].metadata
    assert metadata["posts_per_second"].value > 0 and metadata["posts_in_shard"].value == 11
    assert "tweeteval_sentiment" in metadata["label_distribution"].value
    sampled = label(home, instance, tiny_student, sample=4)
    assert len(pd.read_parquet(HomeLayout(home).asset_path("post_labels", "mine"))) == 4 and sampled.success


@pytest.mark.integration
def test_the_labels_come_in_the_scoring_chosen_for_the_promoted_adapter(home, instance, tiny_student, tmp_path):
    """The evaluation chose raw likelihood for lora:hard on its tuning posts: it is promoted on its raw difference,
    and post_labels labels raw, exactly as a raw labeller does."""
    chosen_raw = pd.concat([report(("lora:hard", 0.06, 0.02, 0.1), scoring="raw"), choice(hard="raw")])
    assert promote(home, instance, tiny_student, chosen_raw).success
    record = pd.read_parquet(HomeLayout(home).asset_path("promoted_student")).iloc[0]
    assert (record["mask_mode"], record["scoring"]) == ("hard", "raw")
    assert label(home, instance, tiny_student, sample=0).success
    labels = pd.read_parquet(HomeLayout(home).asset_path("post_labels", "mine"))
    checkpoints, _ = find_checkpoints({"hard": adapters(home)["hard"]}, ("hard",))
    student = LocalStudent(str(tiny_student), checkpoints, batch_tokens=256)
    with student.using("lora:hard"):
        for calibrate, equal in ((False, True), (True, False)):
            labeller = PostLabeller(student, LabellingConfig(calibrate=calibrate), record["adapter_version"])
            expected = label_posts(POSTS, labeller, tmp_path / str(calibrate)).frame
            column = "tweeteval_sentiment_probabilities"
            same = np.allclose(np.stack(labels[column]), np.stack(expected[column]), atol=1e-5)
            assert same == equal, f"calibrate={calibrate}"


@pytest.mark.integration
def test_nothing_earns_it_nothing_is_promoted_and_labelling_is_refused(home, instance, tiny_student):
    result = promote(home, instance, tiny_student, NOT_SIGNIFICANT)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.description.startswith("nothing promoted: no adapter's tweeteval_sentiment")
    labelled = label(home, instance, tiny_student)
    assert not labelled.success
    message = failure(labelled)
    assert message.startswith("post_labels: no student is promoted (nothing promoted:") and "\n" not in message
    assert not HomeLayout(home).asset_path("post_labels", "mine").exists()


@pytest.mark.integration
def test_a_manual_choice_is_promoted_and_recorded_as_manual(home, instance, tiny_student, monkeypatch, capsys):
    monkeypatch.setenv("OPENGROK_HOME", str(home))
    assert main(["promote", "none"]) == 0
    assert "lora:none is chosen by hand" in capsys.readouterr().out
    result = promote(home, instance, tiny_student, NOT_SIGNIFICANT)
    assert result.success
    record = pd.read_parquet(HomeLayout(home).asset_path("promoted_student")).iloc[0]
    assert (record["mask_mode"], record["how"]) == ("none", "manual")
    assert main(["promote", "auto"]) == 0
    assert not HomeLayout(home).promotion_choice_path.exists()
    with pytest.raises(SystemExit) as refused:
        main(["promote", "best"])
    assert refused.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err


@pytest.mark.integration
def test_an_adapter_of_another_base_is_not_promoted(home, instance, tiny_student):
    write_adapter(tiny_student, adapters(home)["hard"], "hard", recorded_base="/models/Qwen2-0.5B")
    result = promote(home, instance, tiny_student, SIGNIFICANT)
    message = failure(result)
    assert message.startswith("promoted_student: cannot promote lora:hard:") and "Qwen2-0.5B" in message
    assert "\n" not in message and not HomeLayout(home).asset_path("promoted_student").exists()


def test_a_posts_shard_rematerialised_during_labelling_stops_it(tmp_path, instance):
    shard = {"text": ["a post"]}

    @asset(name="posts", partitions_def=post_shard_partitions)
    def fake_posts():
        return pd.DataFrame(shard)

    instance.add_dynamic_partitions(post_shard_partitions.name, ["mine"])
    io = {"io_manager": ParquetIOManager(base_dir=str(tmp_path))}
    assert materialize([fake_posts], instance=instance, partition_key="mine", resources=io).success
    guard = posts_unchanged_guard(SimpleNamespace(instance=instance), "mine")
    guard(0)  # unchanged: labelling goes on
    shard["text"] = ["an edited post"]
    assert materialize([fake_posts], instance=instance, partition_key="mine", resources=io).success
    with pytest.raises(Failure, match=r"posts shard 'mine' changed while it was being labelled \(after chunk 3\)"):
        guard(2)


@pytest.mark.integration
def test_opengrok_run_promotes_then_labels_every_shard_or_says_why_not(
    home, tiny_student, persistent_instance, monkeypatch, capsys
):
    """The last steps of `opengrok run`, through the real code location and jobs on an on-disk instance."""
    from opengrok_dagster.cli.pipeline import StageRunner, promote_and_label_stages, resolve_jobs
    from opengrok_dagster.definitions import build_definitions

    monkeypatch.setenv("OPENGROK_HOME", str(home))
    monkeypatch.setenv("OPENGROK_STUDENT_MODEL", str(tiny_student))
    runner = StageRunner(persistent_instance, resolve_jobs(build_definitions()), run_config={})
    persistent_instance.add_dynamic_partitions(post_shard_partitions.name, ["mine"])
    layout = HomeLayout(home)

    NOT_SIGNIFICANT.to_parquet(layout.asset_path("eval_report"))
    assert runner.run(promote_and_label_stages(persistent_instance))  # nothing earned it: not a failed run
    out = capsys.readouterr().out
    assert "[promote] nothing promoted: no adapter's tweeteval_sentiment" in out and "no posts labelled" in out
    assert "[promote]: stopped by a blocking check" in out and "FAILED" not in out  # a decision, not an error
    assert not layout.asset_path("post_labels", "mine").exists()

    SIGNIFICANT.to_parquet(layout.asset_path("eval_report"))
    assert runner.run(promote_and_label_stages(persistent_instance))
    assert "[label 1/1] shard 'mine': done" in capsys.readouterr().out
    frame = pd.read_parquet(layout.asset_path("post_labels", "mine"))
    assert frame["post_id"].tolist() == POSTS["post_id"].tolist()  # 11 posts, under the demo's sample of 50
