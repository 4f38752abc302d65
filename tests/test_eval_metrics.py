"""Metrics against hand-computed values and the reference libraries; bootstrap and parsing invariants."""

import numpy as np
import pytest
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import f1_score, recall_score

from opengrok_dagster.evaluation.bootstrap import bootstrap, paired_difference, resample_indices
from opengrok_dagster.evaluation.metrics import (
    AgreementScores,
    ClassificationScores,
    MultiLabelScores,
    NerScores,
    sentence_chrf,
)
from opengrok_dagster.evaluation.ner import spans_to_tags
from opengrok_dagster.evaluation.results import ablation_pairs, sample_items
from opengrok_dagster.tasks.formats import find_labels, parse_entity_lines, parse_single_label


def test_classification_metrics_by_hand():
    # class 0: tp 1 of 2, predicted once; class 1: tp 2 of 2, predicted 3 times; class 2: tp 1 of 2, one unparseable.
    scores = ClassificationScores(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, -1]), 3)
    metrics = scores.metrics()
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["macro_recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3)


def test_task_specific_metrics_by_hand():
    irony = ClassificationScores(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]), 2, "f1_class_1").metrics()
    assert irony["f1_class_1"] == pytest.approx(0.5)
    stance = ClassificationScores(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), 3, "f1_against_favor").metrics()
    assert stance["f1_against_favor"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert "f1_class_1" not in ClassificationScores(np.array([0, 1]), np.array([0, 1]), 2).metrics()


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    gold, pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    metrics = ClassificationScores(gold, pred, 4).metrics()
    assert metrics["macro_recall"] == pytest.approx(recall_score(gold, pred, average="macro"))
    assert metrics["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))


def test_multilabel_metrics_match_scikit_learn_and_hand_values():
    gold = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    pred = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    metrics = MultiLabelScores(gold, pred).metrics()
    # micro: tp 2, fp 1, fn 1 -> 4/6; per label F1: 2/3, 1, 0 (label 2 predicted, never gold)
    assert metrics["micro_f1"] == pytest.approx(4 / 6)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    rng = np.random.default_rng(5)
    gold, pred = rng.random((80, 19)) < 0.1, rng.random((80, 19)) < 0.1
    metrics = MultiLabelScores(gold, pred).metrics()
    assert metrics["micro_f1"] == pytest.approx(f1_score(gold, pred, average="micro"))
    assert metrics["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=np.nan))


def test_entity_f1_matches_seqeval():
    gold = [["B-person", "I-person", "O", "B-location"], ["O", "B-product"], ["O"]]
    pred = [["B-person", "I-person", "O", "B-group"], ["O", "O"], ["B-person"]]
    scores = NerScores.from_tags(gold, pred)
    metrics = scores.metrics()
    assert metrics["precision"] == pytest.approx(1 / 3) and metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(seqeval_f1(gold, pred))


def test_perfect_predictor_has_a_zero_width_interval():
    gold = np.random.default_rng(0).integers(0, 3, 50)
    indices = resample_indices(50, 500, seed=1)
    distribution = bootstrap(ClassificationScores(gold, gold.copy(), 3), indices)
    for metric in ("accuracy", "macro_recall", "macro_f1"):
        estimate = distribution.estimate(metric)
        assert estimate.value == estimate.low == estimate.high == 1.0


def test_interval_covers_the_estimate_and_narrows_with_more_items():
    rng = np.random.default_rng(2)
    widths = []
    for n in (40, 400):
        gold = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.7, gold, 1 - gold)
        estimate = bootstrap(ClassificationScores(gold, pred, 2), resample_indices(n, 1000, 0)).estimate("accuracy")
        assert estimate.low <= estimate.value <= estimate.high
        widths.append(estimate.high - estimate.low)
    assert widths[1] < widths[0] / 2


def test_paired_difference_identical_models_and_a_clearly_better_one():
    rng = np.random.default_rng(4)
    gold = rng.integers(0, 3, 120)
    weak = np.where(rng.random(120) < 0.4, gold, (gold + 1) % 3)
    indices = resample_indices(120, 1000, 0)
    perfect, poor = (
        bootstrap(ClassificationScores(gold, gold, 3), indices),
        bootstrap(ClassificationScores(gold, weak, 3), indices),
    )
    same = paired_difference(poor, poor, "accuracy")
    assert same.value == 0 and same.p_value == 1.0
    better = paired_difference(perfect, poor, "accuracy")
    assert better.value > 0.4 and better.low > 0 and better.p_value < 0.01


def test_same_seed_same_numbers():
    gold = np.arange(30) % 3
    pred = (np.arange(30) * 7) % 3
    first = bootstrap(ClassificationScores(gold, pred, 3), resample_indices(30, 300, 9)).estimate("macro_f1")
    second = bootstrap(ClassificationScores(gold, pred, 3), resample_indices(30, 300, 9)).estimate("macro_f1")
    assert first == second
    assert sample_items(100, 10, 3).tolist() == sample_items(100, 10, 3).tolist()
    assert sample_items(5, 0, 3).tolist() == [0, 1, 2, 3, 4]


def test_agreement_metrics():
    chrf = sentence_chrf(["the cat sat on the mat", "x"], ["the cat sat on the mat", "completely different"])
    assert chrf[0] == pytest.approx(100.0) and chrf[1] < 20
    scores = AgreementScores(chrf, nll_sum=np.array([2.0, 4.0]), tokens=np.array([2, 4])).metrics()
    assert scores["perplexity"] == pytest.approx(np.exp(1.0))


def test_single_label_parsing():
    words = ["not hate", "hate"]
    assert parse_single_label("Not hate.", words) == 0
    assert parse_single_label("**hate**", words) == 1
    assert parse_single_label("It could be hate or not hate", words) == -1
    assert parse_single_label(None, words) == -1
    assert parse_single_label("Positive", ["negative", "neutral", "positive"]) == 2
    assert parse_single_label("I cannot tell", ["negative", "neutral", "positive"]) == -1


def test_multi_label_parsing_tolerates_ampersands_and_order():
    words = ["arts & culture", "music", "film tv & video"]
    assert find_labels("Music, Arts and Culture", words) == [1, 0]
    assert find_labels("Film, TV & Video", words) == [2]  # the dataset's display name, punctuation ignored
    assert find_labels("cinema", words) == []


def test_entity_line_parsing_and_span_location():
    answer = "- **Person**: Justin Bieber\n2. loc: Paris, London\nnonsense line\nnone\nproduct: iPhone 15"
    parsed = parse_entity_lines(answer, ["person", "location", "product"])
    assert parsed.spans == [
        ("person", "Justin Bieber"),
        ("location", "Paris"),
        ("location", "London"),
        ("product", "iPhone 15"),
    ]
    assert parsed.unparsed_lines == 1
    tokens = ["justin", "bieber", "flew", "to", "Paris", "!", "#iPhone"]
    tags, missing = spans_to_tags(tokens, parsed.spans, {"person": "PER", "location": "LOC", "product": "PRODUCT"})
    assert tags == ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O"]
    assert missing == 2  # London and "iPhone 15" are not in the post


def test_ablation_pairs_compare_adapters_with_base_and_masks_with_none():
    pairs = ablation_pairs(["base", "lora:none", "lora:hard", "teacher", "tfidf-lr:gold"])
    assert pairs == [("lora:none", "base"), ("lora:hard", "base"), ("lora:hard", "lora:none")]
