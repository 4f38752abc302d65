"""Calibrated label scoring and class-balanced training data: the two parts of the recipe that make a small
student learn the conditional instead of the label prior."""

import numpy as np
import pandas as pd
import pytest

from opengrok_dagster.evaluation.calibration import CONTENT_FREE_POSTS, calibrate, calibrated_label_logprobs, normalise
from opengrok_dagster.tasks.formats import task_format
from opengrok_dagster.training.data import balance_classes


def test_calibration_removes_a_prior_the_content_free_posts_show():
    # A scorer that prefers label 0 by a constant margin whatever the post says, plus a small real signal.
    signal = np.array([[0.0, 0.4, 0.0], [0.0, 0.0, 0.4], [0.4, 0.0, 0.0]])
    prior = np.log(np.array([0.8, 0.1, 0.1]))
    items = signal + prior
    assert (items.argmax(axis=1) == 0).all()  # uncalibrated: the prior wins every time
    calibrated = calibrate(items, np.tile(prior, (len(CONTENT_FREE_POSTS), 1)))
    assert calibrated.argmax(axis=1).tolist() == [1, 2, 0]
    assert np.allclose(np.exp(calibrated).sum(axis=1), 1.0)


def test_calibration_averages_the_content_free_distributions_in_probability_space():
    free = np.log(np.array([[0.9, 0.05, 0.05], [0.1, 0.45, 0.45]]))
    items = np.log(np.array([[0.5, 0.25, 0.25]]))
    expected = normalise(items - np.log(np.array([[0.5, 0.25, 0.25]])))
    assert np.allclose(calibrate(items, free), expected)
    assert np.allclose(np.exp(expected), 1 / 3)


class _Scorer:
    """Any object with ``label_logprobs``: it scores by whether the post is content-free, recording the prompts."""

    def __init__(self):
        self.seen = []

    def label_logprobs(self, messages, answers):
        self.seen.extend(m[-1]["content"] for m in messages)
        return np.array(
            [
                [0.0, -1.0, -3.0] if m[-1]["content"].endswith(("N/A", ": ", "[MASK]")) else [0.0, -0.5, -0.5]
                for m in messages
            ]
        )


def test_calibrated_scores_ask_the_same_prompt_with_each_content_free_post():
    fmt = task_format("tweeteval_sentiment")
    scorer = _Scorer()
    scores = calibrated_label_logprobs(scorer, [fmt.messages("great game tonight")], fmt.messages, list(fmt.words))
    assert scores.argmax(axis=1).tolist() == [2]  # least favoured by the prior once it is divided out
    assert [text.rsplit("Post:", 1)[1].strip() for text in scorer.seen[1:]] == [p.strip() for p in CONTENT_FREE_POSTS]
    assert all(text.startswith(fmt.messages("x")[-1]["content"][:-1]) for text in scorer.seen)


def _table(labels, validation=2):
    rows = [{"example_id": f"t{i}", "split": "train", "value": i} for i in range(len(labels))]
    rows += [{"example_id": f"v{i}", "split": "validation", "value": 100 + i} for i in range(validation)]
    classes = pd.Series(list(labels) + ["negative"] * validation)
    return pd.DataFrame(rows), classes


def test_balance_classes_oversamples_every_train_class_to_the_largest():
    table, classes = _table(["positive"] * 6 + ["neutral"] * 3 + ["negative"] * 1)
    balanced = balance_classes(table, classes, seed=0)
    train = balanced[balanced["split"] == "train"]
    label_of = dict(zip(table["example_id"], classes))
    assert pd.Series([label_of[e] for e in train["example_id"]]).value_counts().to_dict() == {
        "positive": 6,
        "neutral": 6,
        "negative": 6,
    }
    neutral = train["example_id"][train["example_id"].map(label_of) == "neutral"].value_counts()
    assert sorted(neutral.to_list()) == [2, 2, 2]  # each neutral row repeated equally often
    assert sorted(balanced.loc[balanced["split"] == "validation", "example_id"]) == [
        "v0",
        "v1",
    ]  # validation untouched
    assert balance_classes(table, classes, seed=0).equals(balanced)  # seeded


def test_balance_classes_keeps_unlabelled_rows_once_and_needs_two_classes():
    table, classes = _table(["positive", "positive", None, "neutral"])
    balanced = balance_classes(table, classes, seed=1)
    assert (balanced["example_id"] == "t2").sum() == 1
    assert (balanced["example_id"] == "t3").sum() == 2
    one_class, labels = _table(["positive"] * 3)
    assert balance_classes(one_class, labels, seed=0) is one_class


@pytest.mark.parametrize("seed", [0, 1])
def test_balance_classes_repeats_whole_copies_before_any_row_a_third_time(seed):
    table, classes = _table(["positive"] * 7 + ["negative"] * 3)
    balanced = balance_classes(table, classes, seed=seed)
    counts = balanced["example_id"][balanced["example_id"].isin(["t7", "t8", "t9"])].value_counts()
    assert sorted(counts.to_list()) == [2, 2, 3]


def test_a_class_given_fewer_than_min_examples_times_is_not_oversampled():
    table, classes = _table(["negative"] * 9 + ["positive"] * 3 + ["neutral"] * 1)
    balanced = balance_classes(table, classes, seed=0, min_examples=2)
    train = balanced.loc[balanced["split"] == "train", "example_id"]
    label_of = dict(zip(table["example_id"], classes))
    # positive (3 rows) is repeated up to negative's 9; the single neutral post stays one row, not nine copies.
    assert train.map(label_of).value_counts().to_dict() == {"negative": 9, "positive": 9, "neutral": 1}
