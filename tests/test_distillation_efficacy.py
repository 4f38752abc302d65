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
    assert np.isclose(ratio["low"], np.percentile([0.75, 0.5, 0.0], 2.5)) and np.isclose(
        ratio["high"], np.percentile([0.75, 0.5, 0.0], 97.5)
    )


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
    assert frame.loc[0, ["system_prompt", "prompt", "response", "class_label"]].tolist() == [
        system["content"],
        user["content"],
        "positive",
        "tweeteval_sentiment:positive",  # what the trainer balances classes by, as for pipeline annotations
    ]
    assert frame["example_id"].tolist() == ["t00000", "t00001"] and (frame["split"] == "train").all()


def _result(n):
    interval = {"value": 0.5, "low": 0.4, "high": 0.6}
    return {
        "task": "tweeteval_sentiment",
        "metric": METRIC,
        "val_posts": 300,
        "val_source": "val",
        "command": f"python -m bench.distillation_efficacy --sizes {n}",
        "commit": "abc",
        "started": "2026-12-01 09:16 UTC",
        "device": "cpu (fp32)",
        "load_average_before": 12.0,
        "grid": {
            "teachers": ["reference"],
            "sizes": [n],
            "seeds": [0],
            "modes": ["none"],
            "strengths": ["default"],
            "val_posts": 300,
        },
        "recipe": {
            "lora_r": 16,
            "lora_alpha": 32,
            "learning_rate": 1e-3,
            "num_epochs": 1.0,
            "batch_size": 8,
            "max_length": 128,
        },
        "scoring": "calibrated",
        "base": {"calibrated": interval, "raw": interval, "predicted_counts": [1, 2, 3]},
        "teachers": {
            "reference": {
                "name": "reference teacher (TF-IDF+LR on gold train), not an LLM",
                "val": interval,
                "val_unparseable": 0.0,
                "annotated": n,
                "usable": n,
                "label_counts": [1, 1, 1],
            }
        },
        "cells": [
            {
                "teacher": "reference",
                "n": n,
                "seed": 0,
                "mode": "none",
                "strength": "-",
                "masked_share": 0.0,
                "train_examples_balanced": 9,
                "steps": 2,
                "train_seconds": 5,
                "student": interval,
                "student_raw": 0.4,
                "predicted_counts": [1, 1, 1],
                "difference": interval,
                "transfer_ratio": interval,
            }
        ],
        "summary": [],
    }


def test_outputs_keep_the_hand_written_notes_and_append_runs(tmp_path):
    import argparse
    import json

    from bench.distillation_efficacy import earlier_runs, write_outputs

    page, figures = tmp_path / "efficacy.md", tmp_path / "efficacy.json"
    page.write_text("# old\n<!-- kept -->\nsettings search notes\n<!-- /kept -->\n## Measured\nold figures\n")
    args = argparse.Namespace(output=page, json=figures, earlier=[])
    write_outputs(_result(250), args, partial=True)
    assert "settings search notes" in page.read_text() and "old figures" not in page.read_text()
    assert "**Partial" in page.read_text()
    args.earlier = earlier_runs(figures)
    write_outputs(_result(500), args, partial=False)
    runs = json.loads(figures.read_text())["runs"]
    assert [(r["grid"]["sizes"], r["partial"]) for r in runs] == [([250], True), ([500], False)]
    text = page.read_text()
    assert (
        "## Measured (run 1 of 2)" in text
        and "## Measured (run 2 of 2)" in text
        and text.count("settings search notes") == 1
    )
