"""The efficacy bench's own arithmetic: paired transfer ratio, seed averaging, masked share, training examples."""

import numpy as np
import pandas as pd

from bench.distillation_efficacy import METRIC, examples_frame, masked_share, mean_distribution, transfer_ratio
from opengrok_dagster.evaluation.bootstrap import Distribution
from opengrok_dagster.sns_tasks import task_format


def dist(point, samples):
    return Distribution({METRIC: point}, {METRIC: np.array(samples, dtype=float)})


def test_transfer_ratio_is_paired_per_resample_and_leaves_out_resamples_where_the_teacher_does_not_beat_the_base():
    base = dist(0.3, [0.3, 0.3, 0.3, 0.3])
    teacher = dist(0.7, [0.7, 0.5, 0.3, 0.7])
    student = dist(0.6, [0.6, 0.4, 0.5, 0.3])
    ratio = transfer_ratio(student, base, teacher)
    assert np.isclose(ratio["value"], 0.75)
    assert ratio["resamples_left_out"] == 1  # the third resample: teacher == base
    assert np.isclose(ratio["low"], np.percentile([0.75, 0.5, 0.0], 2.5)) and np.isclose(ratio["high"], np.percentile([0.75, 0.5, 0.0], 97.5))


def test_seed_average_keeps_the_shared_resamples():
    averaged = mean_distribution([dist(0.4, [0.4, 0.2]), dist(0.6, [0.6, 0.8])])
    assert averaged.point[METRIC] == 0.5 and averaged.samples[METRIC].tolist() == [0.5, 0.5]


def test_masked_share_counts_content_tokens_only():
    table = pd.DataFrame({"m": [[1, 0, 0, 1], [0, 1]], "template_token": [[True, True, False, False], [False, False]]})
    assert masked_share(table) == 2 / 4


def test_training_examples_are_the_evaluation_prompt_and_answer():
    fmt = task_format("tweeteval_sentiment")
    frame = examples_frame(["so good!", "meh"], np.array([2, 1]), "train", "t")
    system, user = fmt.messages("so good!")
    assert frame.loc[0, ["system_prompt", "prompt", "response", "label"]].tolist() == [system["content"], user["content"], "positive", 2]
    assert frame["example_id"].tolist() == ["t00000", "t00001"] and (frame["split"] == "train").all()
