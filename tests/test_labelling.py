"""Promotion (which adapter earns labelling the user's posts) and the chunked, resumable labelling itself."""

import numpy as np
import pandas as pd
import pytest

from assets.labelling import agreement_markdown
from opengrok_dagster.evaluation.calibration import calibrated_label_logprobs
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.local import LocalStudent, find_checkpoints
from opengrok_dagster.evaluation.report.frame import results_frame
from opengrok_dagster.evaluation.results import EvaluationResults
from opengrok_dagster.labelling.agreement import (
    EntityAgreement,
    TopicAgreement,
    cohen_kappa,
    heldout_annotations,
    posts_agreement,
)
from opengrok_dagster.labelling.labeller import (
    LabellingConfig,
    PostLabeller,
    label_distribution,
    label_posts,
    sample_posts,
)
from opengrok_dagster.labelling.promotion import (
    PromotionConfig,
    PromotionError,
    choose,
    read_manual_choice,
    require_compatible,
    teacher_agreement,
    write_manual_choice,
)
from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint
from opengrok_dagster.tasks.formats import Annotation, task_format
from tests.conftest import adapters, write_adapter


def report(*differences, task="tweeteval_sentiment", metric="macro_f1", scoring="calibrated"):
    """An eval_report frame with a score row and one paired difference over base per (model, value, low, high),
    all under ``scoring``."""
    rows = [
        {
            "section": "score",
            "task": task,
            "model": "base",
            "scoring": scoring,
            "metric": metric,
            "primary": True,
            "value": 0.4,
        }
    ]
    rows += [
        {
            "section": "paired_difference",
            "task": task,
            "model": model,
            "scoring": scoring,
            "compared_to": "base",
            "metric": metric,
            "primary": True,
            "value": value,
            "ci_low": low,
            "ci_high": high,
        }
        for model, value, low, high in differences
    ]
    return pd.DataFrame(rows)


def test_the_adapter_with_the_highest_significant_lower_bound_is_promoted():
    frame = report(("lora:none", 0.08, 0.02, 0.12), ("lora:hard", 0.06, 0.03, 0.09), ("lora:soft", 0.2, -0.01, 0.4))
    promotion = choose(frame, {"none", "hard", "soft"}, PromotionConfig())
    assert (promotion.mask_mode, promotion.how, promotion.ci_low) == ("hard", "rule", 0.03)
    assert "lora:hard (calibrated) +0.060 [0.030, 0.090]" in promotion.reason and "highest of 2" in promotion.reason
    # an adapter that is no longer materialised cannot be promoted, whatever it scored
    assert choose(frame, {"none", "soft"}, PromotionConfig()).mask_mode == "none"
    assert choose(frame, {"none", "hard"}, PromotionConfig(margin=0.025)).mask_mode == "hard"


def test_nothing_qualifies_nothing_is_promoted_and_one_line_says_why():
    promotion = choose(report(("lora:none", 0.031, -0.005, 0.072)), {"none"}, PromotionConfig())
    assert promotion.mask_mode is None and promotion.how == "none"
    assert promotion.reason == (
        "nothing promoted: no adapter's tweeteval_sentiment macro_f1 difference over base, each in its label "
        "scoring, has a lower bound above 0 (lora:none (calibrated) +0.031 [-0.005, 0.072])"
    )
    assert "\n" not in promotion.reason
    other_task = choose(report(("lora:none", 0.1, 0.05, 0.2)), {"none"}, PromotionConfig(task="tweet_topic"))
    assert other_task.mask_mode is None and "has no tweet_topic" in other_task.reason
    other_metric = choose(report(("lora:none", 0.1, 0.05, 0.2)), {"none"}, PromotionConfig(metric="accuracy"))
    assert other_metric.mask_mode is None


def choice(task="tweeteval_sentiment", **chosen):
    """The eval report's rows of the label scoring chosen for each adapter (``mode=scoring``) on tuning posts."""
    return pd.DataFrame(
        [
            {"section": "scoring_choice", "task": task, "model": f"lora:{mode}", "scoring": scoring, "value": 0.5}
            for mode, scoring in chosen.items()
        ]
    )


def test_the_difference_that_decides_is_the_one_under_the_scoring_of_the_labels_users_get():
    """Every scoring's differences are in the report; without a choice in the report promotion reads the
    labeller's default (calibrated), not whichever row comes last."""
    frame = pd.concat(
        [
            report(("lora:none", 0.19, 0.14, 0.24), scoring="calibrated"),
            report(("lora:none", -0.004, -0.051, 0.040), scoring="generated"),
        ]
    )
    assert LabellingConfig().scoring("single") == "calibrated"
    promotion = choose(frame, {"none"}, PromotionConfig())
    assert (promotion.mask_mode, promotion.scoring, promotion.ci_low) == ("none", "calibrated", 0.14)
    assert "lora:none (calibrated) +0.190" in promotion.reason
    # labels from raw likelihoods (post_labels calibrate: false) are promoted on the raw difference
    assert LabellingConfig(calibrate=False).scoring("single") == "raw"
    assert choose(frame, {"none"}, PromotionConfig(scoring="generated")).mask_mode is None
    with pytest.raises(ValueError, match="promotion scoring 'greedy': choose one of"):
        PromotionConfig(scoring="greedy")


def test_each_adapter_is_judged_in_the_label_scoring_chosen_for_it_and_its_labels_follow():
    """An adapter whose raw labels were chosen on tuning posts earns promotion on its raw difference over the raw
    base, and post_labels then labels raw; a scoring set by hand overrides both choices."""
    frame = pd.concat(
        [
            report(("lora:none", 0.05, -0.01, 0.11), ("lora:soft", 0.04, 0.01, 0.07), scoring="calibrated"),
            report(("lora:none", 0.12, 0.06, 0.18), ("lora:soft", 0.20, -0.02, 0.40), scoring="raw"),
            choice(none="raw", soft="calibrated"),
        ]
    )
    promotion = choose(frame, {"none", "soft"}, PromotionConfig())
    assert (promotion.mask_mode, promotion.scoring, promotion.ci_low) == ("none", "raw", 0.06)
    assert "lora:none (raw) +0.120 [0.060, 0.180]" in promotion.reason and "highest of 2" in promotion.reason
    assert LabellingConfig().following(promotion.scoring).calibrate is False
    assert LabellingConfig().following("calibrated").calibrate is True
    assert LabellingConfig().following("generated").calibrate is True  # an NER promotion leaves classes calibrated
    assert LabellingConfig(calibrate=True).following("raw").calibrate is True  # set by hand, kept
    by_hand = choose(frame, {"none", "soft"}, PromotionConfig(scoring="calibrated"))
    assert (by_hand.mask_mode, by_hand.scoring) == ("soft", "calibrated")
    manual = choose(frame, {"none", "soft"}, PromotionConfig(), manual="soft")
    assert (manual.scoring, manual.ci_low) == ("calibrated", 0.01)
    nothing = choose(frame, {"soft"}, PromotionConfig(margin=0.05))
    assert (nothing.mask_mode, nothing.scoring) == (None, "per adapter")


def test_a_manual_choice_wins_and_is_recorded_as_manual(tmp_path):
    frame = report(("lora:none", 0.031, -0.005, 0.072))
    promotion = choose(frame, {"none"}, PromotionConfig(), manual="none")
    assert (promotion.mask_mode, promotion.how) == ("none", "manual")
    assert "chosen by hand" in promotion.reason and "+0.031" in promotion.reason
    with pytest.raises(PromotionError, match="no materialised adapter"):
        choose(frame, {"none"}, PromotionConfig(), manual="hard")
    path = tmp_path / "promotion.json"
    assert read_manual_choice(path) is None
    write_manual_choice(path, "hard")
    assert read_manual_choice(path) == "hard"
    write_manual_choice(path, None)
    assert read_manual_choice(path) is None


def test_an_unknown_task_is_refused_naming_it():
    with pytest.raises(ValueError, match="no_such_task"):
        PromotionConfig(task="no_such_task")


def test_an_adapter_of_another_base_or_tokenizer_is_refused(tmp_path, tiny_student, tokenizer):
    other_base = write_adapter(tiny_student, tmp_path / "a", "none", recorded_base="/models/Qwen2-0.5B")
    [checkpoint], _ = find_checkpoints({"none": other_base}, ("none",))
    with pytest.raises(PromotionError, match="cannot promote lora:none: .*Qwen2-0.5B"):
        require_compatible(checkpoint, tiny_student)
    own = write_adapter(tiny_student, tmp_path / "b", "none")
    other_tokenizer = tokenizer.__class__.from_pretrained(tiny_student)
    other_tokenizer.add_tokens(["<a-token-the-student-lacks>"])
    other_tokenizer.save_pretrained(own)
    [checkpoint], _ = find_checkpoints({"none": own}, ("none",))
    with pytest.raises(PromotionError, match="its tokenizer .* is not the student's"):
        require_compatible(checkpoint, tiny_student, tokenizer_fingerprint(tokenizer))
    tokenizer.save_pretrained(own)
    require_compatible(checkpoint, tiny_student, tokenizer_fingerprint(tokenizer))


POSTS = pd.DataFrame(
    {
        "post_id": [f"s1:{i}" for i in range(11)],
        "text": [f"post {i}: {'loving it' if i % 2 else 'awful day'} #{i}" for i in range(11)],
    }
)


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, tiny_student, one_torch_thread):
    home = tmp_path_factory.mktemp("home")
    write_adapter(tiny_student, adapters(home)["hard"], "hard")
    checkpoints, _ = find_checkpoints({"hard": adapters(home)["hard"]}, ("hard",))
    student = LocalStudent(tiny_student, checkpoints, batch_tokens=256)
    with student.using("lora:hard"):
        yield student, checkpoints[0].version


def labeller(promoted, **settings):
    student, digest = promoted
    return PostLabeller(student, LabellingConfig(chunk_posts=4, **settings), digest)


def test_sentiment_labels_are_the_evaluation_calibrated_scores(promoted, tmp_path):
    outcome = label_posts(POSTS, labeller(promoted), tmp_path / "work")
    sentiment = task_format("tweeteval_sentiment")
    expected = np.exp(
        calibrated_label_logprobs(
            promoted[0], [sentiment.messages(t) for t in POSTS["text"]], sentiment.messages, list(sentiment.words)
        )
    )
    frame = outcome.frame
    assert frame["post_id"].tolist() == POSTS["post_id"].tolist()
    probabilities = np.array(frame["tweeteval_sentiment_probabilities"].tolist())
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert frame["tweeteval_sentiment"].tolist() == [sentiment.words[i] for i in expected.argmax(axis=1)]
    assert set(frame["model_digest"]) == {promoted[1]}
    assert (outcome.chunks_labelled, outcome.chunks_reused, outcome.posts_labelled) == (3, 0, 11)
    assert sum(outcome.distribution["tweeteval_sentiment"].values()) == 11


def test_topics_come_in_the_report_answer_format(promoted, tmp_path):
    frame = label_posts(POSTS, labeller(promoted, tasks=("tweet_topic",)), tmp_path / "work").frame
    words = task_format("tweet_topic").words
    for answer, row in zip(frame["tweet_topic"], frame["tweet_topic_probabilities"]):
        assert words[int(np.argmax(row))] in answer.split(", ")
        assert all(word in words for word in answer.split(", "))


def test_entities_come_in_the_report_answer_format_or_null_when_unreadable(promoted, tmp_path):
    student, _ = promoted
    config = {"tasks": ("tweeteval_sentiment", "wnut17"), "ner_max_new_tokens": 6}
    outcome = label_posts(POSTS, labeller(promoted, **config), tmp_path / "work")
    wnut = task_format("wnut17")
    answers = student.generate([wnut.messages(t) for t in POSTS["text"]], 6)
    expected = []
    for answer, text in zip(answers, POSTS["text"]):
        found = wnut.parse(answer, text)
        expected.append(None if found.reason else wnut.answer(found))
    assert outcome.frame["wnut17"].tolist() == expected
    assert "wnut17_probabilities" not in outcome.frame and "tweeteval_sentiment_probabilities" in outcome.frame
    assert sum(outcome.distribution["wnut17"].values()) >= sum(label is None for label in expected)
    assert label_distribution(pd.Series(["person: Ann\nlocation: Rome", None, "none"]), "ner") == {
        "person": 1,
        "location": 1,
        "unreadable": 1,
        "none": 1,
    }
    assert label_distribution(pd.Series(["music, sports", "music"]), "multilabel") == {"music": 2, "sports": 1}


class Killed(RuntimeError):
    pass


def test_a_killed_run_resumes_and_labels_every_post_exactly_once(promoted, tmp_path):
    uninterrupted = label_posts(POSTS, labeller(promoted), tmp_path / "straight").frame

    def kill_after_second_chunk(index):
        if index == 1:
            raise Killed

    with pytest.raises(Killed):
        label_posts(POSTS, labeller(promoted), tmp_path / "work", after_chunk=kill_after_second_chunk)
    scored = []
    counting = labeller(promoted)
    label = counting.label
    counting.label = lambda chunk: scored.extend(chunk["post_id"]) or label(chunk)
    resumed = label_posts(POSTS, counting, tmp_path / "work")
    assert scored == POSTS["post_id"].tolist()[8:]  # only the chunk the kill left unlabelled
    assert (resumed.chunks_reused, resumed.chunks_labelled) == (2, 1)
    pd.testing.assert_frame_equal(resumed.frame, uninterrupted)


def test_a_changed_post_or_model_relabels_its_chunk_only(promoted, tmp_path):
    label_posts(POSTS, labeller(promoted), tmp_path / "work")
    changed = POSTS.copy()
    changed.loc[5, "text"] = "an edited post"
    outcome = label_posts(changed, labeller(promoted), tmp_path / "work")
    assert (outcome.chunks_reused, outcome.chunks_labelled) == (2, 1)
    assert len(list((tmp_path / "work").glob("chunk-*"))) == 3  # the stale chunk is gone
    student, _ = promoted
    other_model = PostLabeller(student, LabellingConfig(chunk_posts=4), "another-digest")
    assert label_posts(changed, other_model, tmp_path / "work").chunks_labelled == 3


def test_the_sample_is_seeded_and_keeps_the_shard_order():
    config = LabellingConfig(sample=5, seed=3)
    first, again = sample_posts(POSTS, config), sample_posts(POSTS, config)
    pd.testing.assert_frame_equal(first, again)
    assert len(first) == 5 and first["post_id"].tolist() == sorted(first["post_id"], key=lambda p: int(p[3:]))
    assert len(sample_posts(POSTS, LabellingConfig(sample=0))) == 11


@pytest.mark.parametrize(
    "settings, message",
    [({"tasks": ("wnut18",)}, "wnut18"), ({"tasks": ()}, "tasks is empty"), ({"sample": -1}, "sample")],
)
def test_bad_labelling_settings_are_refused_naming_them(settings, message):
    with pytest.raises(ValueError, match=message):
        LabellingConfig(**settings)


def test_cohen_kappa_is_sklearns():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    second[:30] = first[:30]
    assert cohen_kappa(first, second, 3) == pytest.approx(cohen_kappa_score(first, second))
    assert cohen_kappa(first, first, 3) == pytest.approx(1.0)
    assert np.isnan(cohen_kappa(np.zeros(4, int), np.zeros(4, int), 3))  # chance agreement is total


def annotations(texts, answers, split="heldout", task="tweeteval_sentiment", state="kept"):
    """filtered_responses rows of teacher annotations of posts, as the filter writes them."""
    fmt = task_format(task)
    return pd.DataFrame(
        {
            "example_id": [f"{split}{i}" for i in range(len(texts))],
            "system_prompt": [fmt.messages(t)[0]["content"] for t in texts],
            "prompt": [fmt.messages(t)[1]["content"] for t in texts],
            "response": answers,
            "task": task,
            "split": split,
            "state": state,
        }
    )


def student_labels(student, texts: list[str], calibrated: bool) -> np.ndarray:
    """The adapter's sentiment labels of ``texts`` by label likelihood, calibrated or raw."""
    sentiment = task_format("tweeteval_sentiment")
    messages, words = [sentiment.messages(t) for t in texts], list(sentiment.words)
    with student.using("lora:hard"):
        if calibrated:
            return calibrated_label_logprobs(student, messages, sentiment.messages, words).argmax(axis=1)
        return student.label_logprobs(messages, words).argmax(axis=1)


def test_agreement_is_measured_on_held_out_annotations_only_for_every_variant(promoted):
    student, _ = promoted
    texts = POSTS["text"].tolist()
    teacher = ["positive" if i % 2 else "negative" for i in range(len(texts))]
    filtered = pd.concat(
        [
            annotations(texts, teacher),
            annotations(["trained on"], ["neutral"], split="train"),
            annotations(["rejected"], ["meh"], state="rejected"),
            annotations(["an unreadable answer"], ["meh"]),
        ],
        ignore_index=True,
    )
    assert len(heldout_annotations(filtered, "tweeteval_sentiment")[0]) == len(texts)
    config = EvaluationConfig(resamples=200, tasks=("tweeteval_sentiment",))
    [result], notes = posts_agreement(student, filtered, config)
    assert result.name == "teacher_agreement_on_posts:tweeteval_sentiment" and result.n == len(texts)
    assert {s.model for s in result.scores} == {"base", "lora:hard"}
    assert any("11 teacher annotations of the user's posts held out" in n for n in notes)
    sentiment = task_format("tweeteval_sentiment")
    expected = calibrated_label_logprobs(
        student, [sentiment.messages(t) for t in texts], sentiment.messages, list(sentiment.words)
    ).argmax(axis=1)
    gold = np.array([list(sentiment.words).index(t) for t in teacher])
    score = next(s for s in result.scores if s.model == "lora:hard")
    assert score.distribution.point["agreement"] == pytest.approx(np.mean(expected == gold))
    estimate = score.distribution.estimate("kappa")
    assert estimate.low <= estimate.value <= estimate.high
    assert result.answers.texts == texts and (result.answers.predictions["lora:hard"] == expected).all()
    assert {c.metric for c in result.comparisons} == {"kappa", "agreement"}
    # raw likelihood, the other label scoring, is measured beside it, and a variant whose labels were chosen raw
    # shows its raw labels in the confusion matrix
    raw = student_labels(student, texts, calibrated=False)
    raw_score = next(s for s in result.all_scores if (s.model, s.scoring) == ("lora:hard", "raw"))
    assert raw_score.distribution.point["agreement"] == pytest.approx(np.mean(raw == gold))
    [chosen_raw], _ = posts_agreement(student, filtered, config, choices={"tweeteval_sentiment": {"lora:hard": "raw"}})
    assert (chosen_raw.answers.predictions["lora:hard"] == raw).all()
    # into the report's long table, and back as the promoted adapter's figures with its confusion matrix
    frame = results_frame(EvaluationResults(config, None, [result], [], [], 0.0))
    figures = teacher_agreement(frame, "lora:hard")["tweeteval_sentiment"]
    assert figures["n"] == len(texts) and figures["agreement"] == pytest.approx(np.mean(expected == gold))
    assert sum(figures["confusion"].values()) == len(texts)
    diagonal = sum(posts for cell, posts in figures["confusion"].items() if len(set(cell.split(" -> "))) == 1)
    assert diagonal == (expected == gold).sum()
    markdown = agreement_markdown(teacher_agreement(frame, "lora:hard"))
    assert "Cohen's kappa" in markdown and "confusion (rows: the teacher's label" in markdown


def test_nothing_held_out_says_how_to_measure_it(promoted):
    student, _ = promoted
    results, notes = posts_agreement(student, annotations(["a"], ["positive"], split="train"), EvaluationConfig())
    assert results == [] and "raise the filter's annotation_heldout_fraction" in notes[0]


def test_topic_agreement_is_kappa_over_every_post_topic_decision_and_micro_f1_against_the_teacher():
    from sklearn.metrics import cohen_kappa_score, f1_score

    rng = np.random.default_rng(0)
    teacher = rng.random((40, 6)) < 0.3
    student = teacher.copy()
    student[:15] = rng.random((15, 6)) < 0.3
    figures = TopicAgreement(student, teacher).metrics()
    assert figures["kappa"] == pytest.approx(cohen_kappa_score(teacher.ravel(), student.ravel()))
    assert figures["micro_f1"] == pytest.approx(f1_score(teacher, student, average="micro"))
    assert figures["agreement"] == pytest.approx((student == teacher).all(axis=1).mean())


def test_entity_agreement_is_f1_over_exact_entities_and_an_unreadable_answer_gives_none():
    teacher = [
        Annotation(spans=(("person", "Adele"), ("location", "Leeds"))),
        Annotation(),
        Annotation(spans=(("organisation", "BBC"),)),
        Annotation(spans=(("person", "Bo"),)),
    ]
    student = [
        Annotation(spans=(("person", "Adele"), ("organisation", "Leeds"))),  # one right, one of the wrong type
        Annotation(),  # both say none: they agree
        Annotation(spans=(("organisation", "BBC"),)),
        Annotation(spans=(("person", "Bo"),), reason="span_not_in_post"),  # unreadable: no entity
    ]
    scores = EntityAgreement.of(student, teacher)
    assert scores.metrics() == {"f1": pytest.approx(2 * 2 / (3 + 4)), "agreement": 0.5}
    assert scores.metrics(np.array([1, 1]))["f1"] == 1.0  # neither gives an entity


def test_topic_and_entity_agreement_use_the_labels_post_labels_gives(promoted):
    student, _ = promoted
    texts = POSTS["text"].tolist()
    topic, entities = task_format("tweet_topic"), task_format("wnut17")
    filtered = pd.concat(
        [
            annotations(texts, [topic.words[i % 3] for i in range(len(texts))], task="tweet_topic"),
            annotations(texts[:4], ["none", "none", "none", "none"], task="wnut17"),
            annotations(["a post"], [f"{entities.words[0]}: Leeds"], task="wnut17"),  # not in the post: unreadable
        ],
        ignore_index=True,
    )
    labelling = LabellingConfig(ner_max_new_tokens=6)
    results, notes = posts_agreement(student, filtered, EvaluationConfig(resamples=100), labelling)
    by_task = {result.name.split(":")[1]: result for result in results}
    assert sorted(by_task) == ["tweet_topic", "wnut17"] and by_task["wnut17"].n == 4
    topics = by_task["tweet_topic"]
    assert topics.primary_metric == "kappa" and topics.answers.multi_label
    with student.using("lora:hard"):
        expected, _ = PostLabeller(student, labelling, "digest").annotate(topic, texts)
    chosen = topics.answers.predictions["lora:hard"]
    assert [tuple(np.flatnonzero(row)) for row in chosen] == [found.labels for found in expected]
    score = next(s for s in topics.scores if s.model == "lora:hard")
    assert set(score.distribution.point) == {"kappa", "agreement", "micro_f1"} and score.scoring == "calibrated"
    ner = by_task["wnut17"]
    assert ner.primary_metric == "f1" and ner.answers is None
    assert {s.scoring for s in ner.scores} == {"generated"}
    assert any("kappa is not defined for spans" in n for n in notes)
    frame = results_frame(EvaluationResults(EvaluationConfig(), None, results, [], [], 0.0))
    markdown = agreement_markdown(teacher_agreement(frame, "lora:hard"))
    assert "micro F1 (teacher as reference)" in markdown and "entity F1 (teacher as reference)" in markdown
    assert "| wnut17 " in markdown and "n/a" in markdown  # no kappa for entities


def test_the_promoted_adapters_agreement_is_read_from_the_report_in_its_label_scoring():
    frame = pd.DataFrame(
        [
            {
                "section": "score",
                "task": "teacher_agreement_on_posts:tweeteval_sentiment",
                "model": model,
                "scoring": scoring,
                "metric": metric,
                "value": value + shift,
                "ci_low": value + shift - 0.1,
                "ci_high": value + shift + 0.1,
                "n": 32,
            }
            for model, value in (("lora:hard", 0.5), ("base", 0.1))
            for metric in ("kappa", "agreement")
            for scoring, shift in (("calibrated", 0.0), ("raw", 0.2))
        ]
    )
    agreement = teacher_agreement(frame, "lora:hard", "calibrated")
    assert agreement == {
        "tweeteval_sentiment": {
            "confusion": {},
            "n": 32,
            "kappa": 0.5,
            "kappa_low": 0.4,
            "kappa_high": 0.6,
            "agreement": 0.5,
            "agreement_low": 0.4,
            "agreement_high": 0.6,
        }
    }
    assert teacher_agreement(frame, "lora:hard", "raw")["tweeteval_sentiment"]["kappa"] == pytest.approx(0.7)
    # promoted on an NER task (generated), its classes are labelled calibrated: that agreement is read
    assert teacher_agreement(frame, "lora:hard", "generated")["tweeteval_sentiment"]["kappa"] == pytest.approx(0.5)
    # a task measured in one scoring only (entities: generated) is read whatever the labels' scoring
    entities = frame[frame["scoring"] == "calibrated"].assign(
        task="teacher_agreement_on_posts:btc", scoring="generated"
    )
    assert teacher_agreement(entities, "lora:hard", "raw")["btc"]["kappa"] == pytest.approx(0.5)
    assert teacher_agreement(frame, None) == {}


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import pandas as pd
from opengrok_dagster.evaluation.local import LocalStudent, find_checkpoints
from opengrok_dagster.labelling.labeller import LabellingConfig, PostLabeller, label_posts

adapter, student_path, posts_path, work = sys.argv[1:]
checkpoints, _ = find_checkpoints({"hard": adapter}, ("hard",))
student = LocalStudent(student_path, checkpoints, batch_tokens=256)
with student.using("lora:hard"):
    labeller = PostLabeller(student, LabellingConfig(chunk_posts=4), checkpoints[0].version)
    # SIGKILL after the second chunk: no exception handler or cleanup runs, as when the OOM killer strikes
    label_posts(pd.read_parquet(posts_path), labeller, Path(work), after_chunk=lambda i: i == 1 and os.kill(os.getpid(), signal.SIGKILL))
"""


@pytest.mark.integration
def test_a_sigkilled_labelling_run_resumes_to_the_uninterrupted_parquet(promoted, tiny_student, tmp_path):
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    student, digest = promoted
    [adapter] = [c.adapter_dir for c in student.checkpoints]
    POSTS.to_parquet(tmp_path / "posts.parquet")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_RUN,
            str(adapter),
            tiny_student,
            str(tmp_path / "posts.parquet"),
            str(tmp_path / "work"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(list((tmp_path / "work").glob("chunk-*.parquet"))) == 2
    resumed = label_posts(POSTS, labeller(promoted), tmp_path / "work")
    assert (resumed.chunks_reused, resumed.chunks_labelled, resumed.posts_labelled) == (2, 1, 3)
    uninterrupted = label_posts(POSTS, labeller(promoted), tmp_path / "straight").frame
    pd.testing.assert_frame_equal(resumed.frame, uninterrupted)
    assert resumed.frame["post_id"].is_unique and len(resumed.frame) == len(POSTS)
