"""The evaluation on tiny models: adapter loading and checks, cached label scoring, and eval_report end to end."""

from pathlib import Path

import pandas as pd
import pytest
import torch
from dagster import AssetSpec, materialize
from huggingface_hub import ModelCard

from assets.evaluation import _teacher_model, eval_report
from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.collect.client import ClientLimits, TeacherEndpoint
from opengrok_dagster.evaluation.answers import AnswerCache, request_key
from opengrok_dagster.evaluation.api import ApiModel, EndpointFailure
from opengrok_dagster.evaluation.calibration import calibrated_label_logprobs
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.local import CheckpointError, LocalStudent, find_checkpoints, read_checkpoint
from opengrok_dagster.evaluation.metrics import ClassificationScores
from opengrok_dagster.evaluation.report import build_report
from opengrok_dagster.evaluation.report.frame import results_frame
from opengrok_dagster.evaluation.results import sample_items
from opengrok_dagster.evaluation.runner import Evaluation
from opengrok_dagster.evaluation.scoring_choice import scoring_choices, tuning_items
from opengrok_dagster.partitions import mask_mode_partitions
from opengrok_dagster.settings import CONFIG_DIR
from opengrok_dagster.tasks import datasets
from opengrok_dagster.tasks.formats import classification_messages
from opengrok_dagster.tasks.schemas import MANIFEST_COLUMNS
from opengrok_dagster.tasks.specs import label_words, read_split, task_spec
from opengrok_dagster.training.card import card_metadata, write_card
from opengrok_dagster.training.manifest import adapter_dirs, manifest_frame
from resources import OpenGrokPaths, ParquetIOManager, StudentResource, TeacherResource
from tests.conftest import SHARED_DATA, adapters, write_adapter


SENTIMENT = ["negative", "neutral", "positive"]
UPSTREAM = [AssetSpec("filtered_responses"), AssetSpec("lora_checkpoint", partitions_def=mask_mode_partitions)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_manifests(assets_dir, home):
    """The lora_checkpoint manifests of the modes checkpoints_home trained, as the IO manager stores them."""
    for mode, adapter_dir in adapters(home).items():
        row = dict.fromkeys(MANIFEST_COLUMNS, 0) | {"mask_mode": mode, "adapter_dir": str(adapter_dir)}
        manifest_frame(row).to_parquet(assets_dir / "lora_checkpoint" / f"{mode}.parquet")


def heldout_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "example_id": ["e1", "e2", "e3", "e4"],
            "system_prompt": ["You write posts.", None, "", "You write posts."],
            "prompt": [
                "Write a post about cats.",
                "What are people saying about the rain?",
                "Summarize trends in football.",
                "Post about tea.",
            ],
            "response": [
                "Cats rule the internet today! #cats",
                "Everyone is tired of the rain.",
                None,
                "Green tea all day.",
            ],
            "split": ["heldout", "heldout", "heldout", "train"],
            "state": ["kept"] * 4,
        }
    )


def test_cached_label_scoring_equals_a_full_forward_pass(checkpoints_home, tiny_student):
    checkpoints, _ = find_checkpoints(adapters(checkpoints_home), ("none", "hard"))
    student = LocalStudent(str(tiny_student), checkpoints)
    messages = [
        [{"role": "user", "content": f"How does this post feel? Post: {post}"}]
        for post in ("what a day", "rain again", "ok")
    ]
    for variant in student.variants:
        with student.using(variant):
            all_scores = student.label_logprobs(messages, SENTIMENT)
        for scores, item in zip(all_scores, messages):
            prompt = student._prompt_ids(item)
            for column, answer in enumerate(SENTIMENT):
                continuation = student._continuation(answer)
                with student.using(variant), torch.inference_mode():
                    logits = student.model(input_ids=torch.tensor([prompt + continuation])).logits[0]
                logprobs = torch.log_softmax(logits, dim=-1)
                expected = sum(float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(continuation))
                assert scores[column] == pytest.approx(expected, abs=1e-4)
    with student.using("base"):
        base = student.label_logprobs(messages, SENTIMENT)
    with student.using("lora:hard"):
        assert not (student.label_logprobs(messages, SENTIMENT) == base).all()  # the adapter is really applied


def test_adapter_for_another_base_model_is_refused_by_name(tmp_path, tiny_student):
    adapter = write_adapter(
        tiny_student, tmp_path / "soft", "soft", recorded_base="HuggingFaceTB/SmolLM2-1.7B-Instruct"
    )
    with pytest.raises(
        CheckpointError, match=r"trained on base model 'HuggingFaceTB/SmolLM2-1.7B-Instruct'.*OPENGROK_STUDENT_MODEL"
    ):
        LocalStudent(str(tiny_student), [read_checkpoint(adapter, "soft")])


def test_missing_modes_and_broken_adapters_are_reported(tmp_path, checkpoints_home):
    gone = tmp_path / "deleted"  # in a manifest, but removed from disk since
    found, missing = find_checkpoints(adapters(checkpoints_home) | {"soft": gone}, ("none", "paper", "hard", "soft"))
    assert [c.mask_mode for c in found] == ["none", "hard"]
    assert missing == {
        "paper": "lora_checkpoint[paper] is not materialised: materialise it to include it",
        "soft": f"no adapter at {gone}: re-materialise lora_checkpoint[soft] to include it",
    }
    assert found[0].record == {
        "mask_mode": "none",
        "base_model": found[0].base_model,
        "global_step": 3,
        "best_val_loss": 2.5,
        "examples": 2,
    }
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="is not a peft adapter"):
        read_checkpoint(broken, "paper")


def test_without_data_the_sns_part_says_so_and_agreement_still_runs(tmp_path, monkeypatch, tiny_student):
    monkeypatch.delenv(datasets.DATA_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(datasets, "SHARED_DATA_FALLBACK", tmp_path / "absent")
    config = EvaluationConfig(agreement_examples=0, resamples=100, agreement_max_new_tokens=4)
    results = Evaluation(config, LocalStudent(str(tiny_student)), [], log=lambda _: None).run(heldout_frame().iloc[:2])
    assert [t.name for t in results.tasks] == ["teacher_agreement"]
    assert any("were not evaluated: no data directory was found" in note for note in results.notes)
    assert results.tasks[0].n == 2


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not beside this checkout")
def test_a_task_sampled_too_small_to_measure_is_left_out_with_a_note_saying_how_to_score_it(tiny_student):
    config = EvaluationConfig(
        tasks=("tweeteval_sentiment", "wnut17", "tweet_topic"),
        classification_examples=3,
        task_examples={"tweet_topic": 0},
        ner_examples=6,
        resamples=100,
        baseline_train_examples=50,
        scorings=("raw",),
        headline_scoring="raw",
        min_items={"ner": 100, "single": 2, "multilabel": 100},
    )
    results = Evaluation(config, LocalStudent(str(tiny_student)), [], log=lambda _: None).run(None)
    assert [t.name for t in results.tasks] == ["tweeteval_sentiment"]  # not a row of 0.000 for NER
    (note,) = [n for n in results.notes if n.startswith("wnut17 not scored")]
    assert (
        "6 sentences sampled cannot measure f1" in note and "set task_examples[wnut17] or ner_examples to 100" in note
    )
    # the whole topic val split (20 posts) is too small: only another split can score it
    (note,) = [n for n in results.notes if n.startswith("tweet_topic not scored")]
    assert "20 posts sampled cannot measure" in note and "has only 20: set eval_paths[tweet_topic]" in note


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not beside this checkout")
def test_each_models_label_scoring_is_chosen_on_tuning_posts_none_of_which_is_reported(tiny_student):
    """The choice is the scoring with the higher primary metric on posts drawn apart from the reported ones; it is
    in the results frame (where promotion reads it) and in the report."""
    config = EvaluationConfig(
        tasks=("tweeteval_sentiment",),
        classification_examples=6,
        task_examples={},
        scoring_tuning_examples=8,
        scorings=("calibrated", "raw"),
        headline_scoring="raw",
        teacher_label_examples=0,
        baseline_train_examples=50,
        resamples=100,
        min_items={"single": 2},
    )
    student = LocalStudent(str(tiny_student))
    results = Evaluation(config, student, [], log=lambda _: None).run(None)
    [task] = results.tasks
    [choice] = task.scoring_choices
    spec = task_spec("tweeteval_sentiment")
    data = read_split(spec, datasets.resolve_data_dir(None), spec.eval_path)
    reported = sample_items(len(data.texts), 6, config.seed)
    tuning = tuning_items(len(data.texts), reported, 8, config.seed)
    assert len(tuning) == 8 and not set(tuning) & set(reported)
    assert task.answers.texts == [data.texts[i] for i in reported]
    words = label_words(spec, data.label_names)
    messages = [classification_messages(spec.question, data.texts[i], words) for i in tuning]
    raw = student.label_logprobs(messages, words)
    calibrated = calibrated_label_logprobs(
        student, messages, lambda post: classification_messages(spec.question, post, words), words
    )
    expected = {
        scoring: ClassificationScores(data.labels[tuning], scores.argmax(axis=1), len(words)).metrics()["macro_recall"]
        for scoring, scores in (("calibrated", calibrated), ("raw", raw))
    }
    assert (choice.model, choice.n, choice.metric) == ("base", 8, "macro_recall")
    assert choice.values == pytest.approx(expected)
    assert choice.chosen == max(("calibrated", "raw"), key=lambda s: (expected[s], s == "calibrated"))
    frame = results_frame(results)
    assert scoring_choices(frame, "tweeteval_sentiment") == {"base": choice.chosen}
    assert set(frame[frame["section"] == "tuning_score"]["scoring"]) == {"calibrated", "raw"}
    markdown = build_report(results).markdown()
    assert "Label scoring of each model's labels for post_labels (macro_recall on 8 tuning posts)" in markdown
    # 0 tuning posts: no choice, and promotion falls back to the labeller's default
    none = Evaluation(config.model_copy(update={"scoring_tuning_examples": 0}), student, [], log=lambda _: None)
    assert none.run(None).tasks[0].scoring_choices == []


def test_headline_scoring_must_be_one_of_the_scorings_run():
    with pytest.raises(ValueError, match="headline_scoring 'generated' is not among the scorings"):
        EvaluationConfig(scorings=("raw",))
    with pytest.raises(ValueError, match="choose one or more of generated, calibrated, raw"):
        EvaluationConfig(scorings=("sampled",), headline_scoring="sampled")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not beside this checkout")
def test_eval_report_materialises_with_teacher_failing_endpoint_and_missing_modes(
    tmp_path, instance, checkpoints_home, tiny_student, loopback_teacher, monkeypatch
):
    monkeypatch.delenv("OPENGROK_TEST_ABSENT_KEY", raising=False)
    assets_dir = tmp_path / "assets"
    (assets_dir / "lora_checkpoint").mkdir(parents=True)
    heldout_frame().to_parquet(assets_dir / "filtered_responses.parquet")
    write_manifests(assets_dir, checkpoints_home)  # none and hard; paper and soft are not materialised
    run_config = {
        "ops": {
            "eval_report": {
                "config": {
                    "tasks": ["tweeteval_sentiment", "tweet_topic", "wnut17"],
                    "classification_examples": 4,
                    "task_examples": {},
                    "ner_examples": 2,
                    "min_items": {"ner": 1, "multilabel": 1, "single": 1},  # tiny sizes: scored anyway
                    "agreement_examples": 0,
                    "resamples": 200,
                    "ner_max_new_tokens": 8,
                    "agreement_max_new_tokens": 8,
                    "api_max_tokens": 8,
                    "baseline_train_examples": 300,
                    "teacher_label_examples": 6,
                    "endpoints": [
                        {"name": "unreachable", "base_url": "http://127.0.0.1:9/v1", "model": "gpt-x"},
                        {
                            "name": "keyless",
                            "base_url": loopback_teacher.base_url,
                            "model": "gpt-y",
                            "api_key_env": "OPENGROK_TEST_ABSENT_KEY",
                        },
                    ],
                }
            }
        }
    }
    resources = {
        "io_manager": ParquetIOManager(base_dir=str(assets_dir)),
        "paths": OpenGrokPaths(home=str(checkpoints_home), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
        "student": StudentResource(model=str(tiny_student)),
        "teacher": TeacherResource(
            mode="remote",
            base_url=loopback_teacher.base_url,
            model="loopback",
            prompt_price_per_million=2.0,
            completion_price_per_million=4.0,
        ),
    }
    sent_before = len(loopback_teacher.requests)
    hard_card = checkpoints_home / "checkpoints" / "hard" / "README.md"
    write_card(hard_card, card_metadata(str(tiny_student), "hard"), "# the trainer's card\n")
    result = materialize(UPSTREAM + [eval_report], instance=instance, resources=resources, run_config=run_config)
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())
    frame = pd.read_parquet(assets_dir / "eval_report.parquet")
    scores = frame[frame["section"] == "score"]
    assert set(scores["model"]) >= {"base", "lora:none", "lora:hard", "teacher", "tfidf-lr:gold"}
    assert set(scores["task"]) == {"tweeteval_sentiment", "tweet_topic", "wnut17", "teacher_agreement"}
    assert (
        scores[scores["task"] == "teacher_agreement"]["n"].eq(2).all()
    )  # the train row and the null response are left out
    assert scores[scores["model"] == "teacher"]["unparseable_rate"].notna().all()
    differences = frame[frame["section"] == "paired_difference"]
    assert {("lora:hard", "lora:none"), ("lora:none", "base")} <= set(
        zip(differences["model"], differences["compared_to"])
    )
    assert differences["p_value"].between(0, 1).all()
    references = frame[frame["section"] == "external_reference"]
    assert references["value"].isna().all() and references["external_reference"].notna().all()

    reports = checkpoints_home / "reports"
    markdown, html = (reports / "report.md").read_text(), (reports / "report.html").read_text()
    assert "external reference (published, test set)" in markdown and "RoBERTa-Retrained" in markdown
    assert "Did distillation help? (paired difference student - base)" in markdown
    assert "Confusion matrices" in markdown and "Example posts with each model's answer" in markdown
    assert "after content-free posts" in markdown and "Headline scoring: generated" in markdown
    assert "Scorings side by side (macro_recall)" in markdown and "recall:neutral" in markdown
    base = scores[(scores["model"] == "base") & (scores["task"] == "tweeteval_sentiment")]
    assert set(base["scoring"]) == {"generated", "calibrated", "raw"}  # one model, every scoring that applies
    assert set(scores[scores["model"] == "teacher"]["scoring"]) == {"generated"}
    # each local model's label scoring for post_labels, chosen on other posts of the split
    assert set(scoring_choices(frame, "tweeteval_sentiment")) == {"base", "lora:none", "lora:hard"}
    assert "Label scoring of each model's labels for post_labels" in markdown
    assert set(scores[scores["model"] == "tfidf-lr:gold"]["scoring"]) == {"classifier"}
    assert "data:image/png;base64," in html and "<table" in html and 'src="primary_metrics.png"' not in html
    assert (reports / "primary_metrics.png").read_bytes()[:4] == b"\x89PNG"
    for text in (
        "mask mode paper not evaluated",
        "mask mode soft not evaluated",
        "endpoint unreachable failed",
        "OPENGROK_TEST_ABSENT_KEY (its API key) is not set",
    ):
        assert text in markdown, text
    metadata = result.asset_materializations_for_node("eval_report")[0].metadata
    assert "data:image/png;base64," in metadata["main_plot"].value and "| task" in metadata["summary"].value
    # The evaluated adapter's card now carries its scores as model-index; its text is kept.
    card = ModelCard.load(hard_card)
    recorded = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    hard = scores[scores["model"] == "lora:hard"].dropna(subset=["value"])
    assert recorded == {(row.task, row.metric): pytest.approx(row.value) for row in hard.itertuples()}
    assert card.text == "# the trainer's card\n"
    assert sorted(metadata["model_cards_updated"].value) == [str(hard_card), str(hard_card).replace("hard", "none")]
    assert metadata["device"].value == "cpu (fp32)" and "local student on cpu (fp32), posts per second" in markdown
    rates = metadata["posts_per_second"].value
    assert set(rates) == {"tweeteval_sentiment", "tweet_topic", "wnut17", "teacher_agreement"}
    # Teacher spend: nothing was collected on this home; the evaluation's own teacher requests are priced.
    assert "## Teacher spend" in markdown and "no teacher response was collected on this home" in markdown
    assert f"Teacher: loopback at {loopback_teacher.base_url}, at USD 2 per 1M prompt tokens and 4 per 1M" in markdown
    assert metadata["teacher_spend_usd"].value == 0.0 and metadata["teacher_spend_requests"].value == 0
    assert metadata["evaluation_teacher_requests"].value == len(loopback_teacher.requests) - sent_before > 0
    assert metadata["evaluation_teacher_usd"].value > 0 and "## Teacher spend" in metadata["teacher_spend"].value

    # Rerun: the teacher's answers are reused, so nothing is asked and every number (teacher's included) repeats.
    asked = len(loopback_teacher.requests)
    again = materialize(UPSTREAM + [eval_report], instance=instance, resources=resources, run_config=run_config)
    assert again.success
    assert len(loopback_teacher.requests) == asked
    pd.testing.assert_frame_equal(frame, pd.read_parquet(assets_dir / "eval_report.parquet"))
    assert "answers reused from earlier runs" in (reports / "report.md").read_text()

    run_config["ops"]["eval_report"]["config"]["reuse_api_answers"] = False
    assert materialize(UPSTREAM + [eval_report], instance=instance, resources=resources, run_config=run_config).success
    assert len(loopback_teacher.requests) > asked


def test_answer_cache_reuses_answers_and_asks_again_for_failures(tmp_path, loopback_teacher):
    cache = AnswerCache(tmp_path / "answers.sqlite")
    model = ApiModel("teacher", lambda: TeacherEndpoint(loopback_teacher.base_url, "loopback"), "loopback at test")
    questions = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    cache.put_many(model.description, {request_key(questions[0], 8): "kept answer"})
    before = len(loopback_teacher.requests)
    texts, failed, reused, usage = model.complete_all(questions, 8, cache)
    assert (failed, reused, len(loopback_teacher.requests) - before) == (0, 1, 2)
    assert (usage.requests, usage.reused, usage.usd) == (2, 1, None)  # no prices given: not priced
    assert texts[0] == "kept answer" and texts[1].startswith("Answer to: question 1")
    again = model.complete_all(questions, 8, cache)
    assert again[:3] == (texts, 0, 3) and again.usage.requests == 0
    assert len(loopback_teacher.requests) - before == 2
    # Another token budget is another question; another model does not see these answers.
    assert model.complete_all(questions[:1], 16, cache).reused == 0
    assert cache.get_many("another model", [request_key(questions[0], 8)]) == {}


def test_failed_requests_are_not_kept(tmp_path):
    cache = AnswerCache(tmp_path / "answers.sqlite")
    with LoopbackTeacher(LoopbackConfig(fault_rate=1.0, faults=("500",))) as failing:
        model = ApiModel(
            "flaky",
            lambda: TeacherEndpoint(failing.base_url, "loopback"),
            "flaky at test",
            ClientLimits(max_concurrency=2, max_attempts=1),
        )
        with pytest.raises(EndpointFailure, match="'flaky': all 2 requests failed"):
            model.complete_all([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], 8, cache)
    assert cache.get_many("flaky at test", [request_key([{"role": "user", "content": q}], 8) for q in "ab"]) == {}


def test_the_evaluation_asks_the_teacher_within_the_collection_limits():
    teacher = TeacherResource(
        mode="remote",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        max_concurrency=3,
        requests_per_minute=7,
        max_attempts=2,
    )
    limits = _teacher_model(teacher).limits
    assert limits == teacher.client_limits()
    assert (limits.max_concurrency, limits.requests_per_minute, limits.max_attempts) == (3, 7, 2)


def test_manifests_give_each_modes_adapter_and_a_broken_one_is_named():
    outcome = dict.fromkeys(MANIFEST_COLUMNS, 0) | {"mask_mode": "hard", "adapter_dir": "/ckpt/hard"}
    assert list(manifest_frame(outcome).columns) == list(MANIFEST_COLUMNS)
    assert adapter_dirs({"hard": manifest_frame(outcome)}) == {"hard": Path("/ckpt/hard")}
    with pytest.raises(ValueError, match=r"lora_checkpoint\[soft\] manifest .*missing: adapter_dir.*re-materialise"):
        adapter_dirs({"soft": manifest_frame(outcome).drop(columns="adapter_dir")})
