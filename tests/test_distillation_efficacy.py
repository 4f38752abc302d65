"""The efficacy experiment: its arithmetic (paired transfer ratio, seed averaging, masked share, training examples, step
budget) and, on the real student, its whole loop over a tiny grid."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from experiments.distillation_efficacy import build_parser, grid_from
from experiments.efficacy_cells import arm_config, examples_frame, masked_share, steps_within_budget
from experiments.efficacy_grid import GRIDS, RECIPE, Grid
from experiments.efficacy_page import earlier_runs, markdown, write_outputs
from experiments.efficacy_run import VALIDATION_POSTS, run, split_pool
from experiments.efficacy_stats import (
    NLL,
    MeanScores,
    Measured,
    summary_rows,
    teacher_nll,
    teacher_transfer,
    transfer_ratio,
)
from experiments.efficacy_tasks import EntityTask, Prediction, SentimentTask, split_val
from opengrok_dagster.evaluation.bootstrap import Distribution, bootstrap
from opengrok_dagster.tasks.datasets import resolve_data_dir
from opengrok_dagster.tasks.formats import Annotation, task_format
from opengrok_dagster.tasks.specs import task_spec


METRIC = task_spec("tweeteval_sentiment").primary_metric


@pytest.fixture(scope="module")
def sentiment():
    return SentimentTask(resolve_data_dir(), 10)


def labelled(*labels):
    return [Annotation(labels=(label,)) for label in labels]


def dist(point, samples):
    return Distribution({METRIC: point}, {METRIC: np.array(samples, dtype=float)})


def test_transfer_ratio_is_paired_per_resample_and_leaves_out_resamples_where_the_teacher_does_not_beat_the_base():
    base = dist(0.3, [0.3, 0.3, 0.3, 0.3])
    teacher = dist(0.7, [0.7, 0.5, 0.3, 0.7])
    student = dist(0.6, [0.6, 0.4, 0.5, 0.3])
    ratio = transfer_ratio(student, base, teacher, METRIC)
    assert np.isclose(ratio["value"], 0.75)
    assert ratio["resamples_left_out"] == 1  # the third resample: teacher == base
    assert np.isclose(ratio["low"], np.percentile([0.75, 0.5, 0.0], 2.5)) and np.isclose(
        ratio["high"], np.percentile([0.75, 0.5, 0.0], 97.5)
    )


def test_masked_share_counts_content_tokens_only():
    table = pd.DataFrame({"m": [[1, 0, 0, 1], [0, 1]], "template_token": [[True, True, False, False], [False, False]]})
    assert masked_share(table) == 2 / 4


def test_training_examples_are_the_evaluation_prompt_and_answer(sentiment):
    fmt = task_format("tweeteval_sentiment")
    frame = examples_frame(sentiment, ["so good!", "meh"], labelled(2, 1), "train", "t")
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
        "command": f"python -m experiments.distillation_efficacy --sizes {n}",
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


def test_held_out_teacher_nll_is_minus_the_students_log_likelihood_of_the_teachers_answer_on_usable_posts():
    label_logprobs = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]))
    nll = teacher_nll(label_logprobs, np.array([0, -1, 2]))  # the second post's answer was unusable
    assert np.allclose(nll, [np.log(2), -np.log(0.6)])
    resampled = bootstrap(MeanScores(nll), np.array([[0, 0], [1, 1], [0, 1]]))
    assert np.isclose(resampled.point[NLL], nll.mean())
    assert np.allclose(resampled.samples[NLL], [nll[0], nll[1], nll.mean()])


def test_pool_splits_train_validation_and_held_out_posts_apart():
    pool = [f"post {i}" for i in range(10 + VALIDATION_POSTS + 5)]
    train, validation, held_out = split_pool(pool, 10)
    parts = [set(pool[train]), set(pool[validation]), set(pool[held_out])]
    assert [len(part) for part in parts] == [10, VALIDATION_POSTS, 5]
    assert set.union(*parts) == set(pool) and sum(map(len, parts)) == len(pool)
    assert pool[train] == pool[:10]  # the posts every N draws from are the same with or without held-out posts


def test_both_arms_share_the_recipe_but_the_kd_weight_and_are_unpacked():
    sft, kd = (arm_config(RECIPE.model_copy(update={"packing": True}), 3, alpha, 2.0) for alpha in (0.0, 0.5))
    assert sft.model_dump() | {"kd_alpha": 0.5} == kd.model_dump()
    assert not sft.packing and sft.seed == 3 and kd.kd_temperature == 2.0


def test_kd_summary_is_paired_with_the_sft_arm_of_the_same_mode_on_score_and_held_out_nll():
    def measured(score, samples, nll, nll_samples):
        scores = {"generated": dist(score, samples)}
        return Measured(scores, Distribution({NLL: nll}, {NLL: np.array(nll_samples)}), Prediction({}))

    by_cell = {
        ("none", "-", 0.0): [measured(0.6, [0.6, 0.5, 0.7], 0.9, [0.9, 1.0, 0.8])],
        ("none", "-", 0.5): [measured(0.65, [0.7, 0.5, 0.8], 0.7, [0.6, 0.9, 0.6])],
    }
    base, teacher = {"generated": dist(0.3, [0.3, 0.3, 0.3])}, {"generated": dist(0.7, [0.7, 0.7, 0.7])}
    draws = np.zeros((3, 1), dtype=int)  # one seed: the hierarchical resample is the posts' alone
    (sft, kd), family = summary_rows(by_cell, base, teacher, "reference", 250, METRIC, draws, "generated")
    assert sft["kd_alpha"] == 0.0 and sft["kd_minus_sft"] is None and sft["sft_student"] is None
    gain = kd["kd_minus_sft"]["generated"]
    assert np.isclose(gain["value"], 0.05) and np.isclose(kd["nll_kd_minus_sft"]["value"], -0.2)
    assert np.isclose(gain["low"], np.percentile([0.1, 0.0, 0.1], 2.5))
    assert np.isclose(kd["nll_kd_minus_sft"]["high"], np.percentile([-0.3, -0.1, -0.2], 97.5))
    assert kd["sft_student"]["generated"]["value"] == 0.6 and kd["sft_teacher_nll"]["value"] == 0.9
    assert kd["teacher_nll"]["value"] == 0.7 and np.isclose(kd["difference"]["generated"]["value"], 0.35)
    # the family printed and corrected: both students against the base, and KD against SFT only
    assert [m["comparison"] for m in family["members"]] == [
        "none - base",
        "none + KD 0.5 - base",
        "none + KD 0.5 - SFT only",
    ]
    assert all(m["p_holm"] >= m["p_value"] for m in family["members"])


def test_self_distillation_makes_no_transfer_claim():
    student, base = {"generated": dist(0.6, [0.6, 0.6])}, {"generated": dist(0.3, [0.3, 0.3])}
    assert teacher_transfer(student, base, None, METRIC) is None
    ratio = teacher_transfer(student, base, {"generated": dist(0.9, [0.9, 0.9])}, METRIC)
    assert np.isclose(ratio["value"], 0.5) and ratio["scoring"] == "generated"


def test_tuning_and_reporting_parts_of_the_val_split_are_disjoint_and_whole():
    tuning, reporting = split_val(2000, "tuning"), split_val(2000, "reporting")
    assert len(tuning) == 1400 and len(reporting) == 600  # TweetEval sentiment's 2,000 val posts
    assert not set(tuning) & set(reporting) and len(set(tuning) | set(reporting)) == 2000


def test_training_examples_carry_the_teachers_logprobs_for_the_kd_targets(sentiment):
    logprobs = ['[{"token": "positive", "logprob": -0.1, "top_logprobs": []}]', None]
    frame = examples_frame(sentiment, ["so good!", "meh"], labelled(2, 1), "train", "t", logprobs)
    assert frame["logprobs"].tolist() == logprobs
    assert examples_frame(sentiment, ["meh"], labelled(1), "train", "t")["logprobs"].tolist() == [None]


def test_page_shows_the_kd_comparison_and_still_renders_runs_from_before_it():
    old = _result(250)
    assert "SFT only vs SFT + KD" not in markdown(old, partial=False)  # a run without KD fields renders as before
    new = _result(250)
    interval = {"value": 0.05, "low": -0.01, "high": 0.11, "p_value": 0.2}
    new["grid"] |= {"kd_alphas": [0.0, 0.5], "kd_temperature": 1.0, "held_out_posts": 200}
    new["summary"] = [
        {
            "teacher": "reference",
            "n": 250,
            "mode": "none",
            "strength": "-",
            "kd_alpha": 0.5,
            "seeds": 1,
            "base": interval,
            "student": interval,
            "teacher_score": interval,
            "difference": interval,
            "transfer_ratio": interval,
            "teacher_nll": interval,
            "sft_student": interval,
            "sft_teacher_nll": interval,
            "kd_minus_sft": interval,
            "nll_kd_minus_sft": interval,
        }
    ]
    page = markdown(new, partial=False)
    assert "KD alphas 0, 0.5 (0 = SFT only)" in page and "SFT only vs SFT + KD" in page
    row = next(line for line in page.splitlines() if line.startswith("| reference | 250 | none | - | 1 | 0.5 |"))
    assert row.count("0.050 [-0.010, 0.110]") == 6


def test_step_budget_stops_at_one_epoch_of_the_balanced_split_or_the_budget_whichever_is_fewer(sentiment):
    config = RECIPE.model_copy(update={"batch_size": 8, "balance_min_class_examples": 1})
    labels = labelled(*[0] * 30, *[2] * 10)  # balanced: 30 + 30 train rows, 8 steps of 8
    table = examples_frame(sentiment, [f"post {i}" for i in range(40)], labels, "train", "t")
    assert steps_within_budget(table, config, 64) == 8  # a budget alone would repeat these rows for 64 steps
    assert steps_within_budget(table, config, 5) == 5
    assert steps_within_budget(table, config, -1) == -1  # no budget: the recipe's whole epochs


@pytest.mark.integration
@pytest.mark.parametrize(("task", "counted"), [("tweeteval_sentiment", "neg/neu/pos"), ("btc", "loc/org/per")])
def test_experiment_trains_and_scores_every_cell_of_a_tiny_grid_end_to_end(tmp_path, offline_model, task, counted):
    """The experiment's own loop (teacher, examples, masks, training within the step budget, scoring, page and JSON) on
    the real student and the reference teacher, for a label task and the NER task: nothing else runs it."""
    grid = Grid(("reference",), (16,), (0,), ("none", "hard"), ("default",), 12, (0.0,), 1.0, 0, 2)
    args = argparse.Namespace(resamples=50, threads=1, output=tmp_path / "e.md", json=tmp_path / "e.json", earlier=[])
    result = run(grid, args, "test", task)
    write_outputs(result, args, partial=False)
    cells = {cell["mode"]: cell for cell in result["cells"]}
    assert sorted(cells) == ["hard", "none"] and all(cell["steps"] == 2 for cell in cells.values())
    assert cells["hard"]["masked_share"] > 0 and cells["none"]["masked_share"] == 0
    assert cells["hard"]["minus_none"] is not None and cells["none"]["teacher_nll"] is None  # no held-out posts
    assert [row["mode"] for row in result["summary"]] == ["none", "hard"]
    scorings = result["scorings"]
    assert set(cells["none"]["student"]) == set(scorings) == set(result["base"]["scores"])  # every scoring, each model
    assert list(result["teachers"]["reference"]["scores"]) == ["generated"]
    assert (
        result["teachers"]["reference"]["scores"]["generated"]["value"]
        > result["base"]["scores"]["generated"]["value"]
    )
    assert result["splits"]["scored"] == "reporting" and result["splits"]["tuning"]["posts"] > 0
    (family,) = result["families"]
    assert [m["comparison"] for m in family["members"]] == [
        "none - base",
        "hard (default) - base",
        "hard (default) - none",
    ]
    if task == "tweeteval_sentiment":
        assert scorings == ["generated", "calibrated", "raw"]
        assert set(cells["none"]["per_class"]["generated"]["recall"]) == {"negative", "neutral", "positive"}
    saved = json.loads(args.json.read_text())["runs"][0]
    assert saved["grid"]["max_steps"] == 2 and len(saved["cells"]) == 2 and saved["metric"] == result["metric"]
    page = args.output.read_text()
    assert "| reference | 16 | 0 | hard |" in page and f"predicted {counted}" in page
    assert "Holm family: teacher reference, N 16" in page and "Headline scoring: generated" in page


@pytest.fixture(scope="module")
def entities():
    return EntityTask(resolve_data_dir(), 40)


def gold_annotations(task):
    """The gold entities of the sampled val sentences, as the teacher's annotations would carry them."""
    from seqeval.metrics.sequence_labeling import get_entities

    word_of = dict(zip(task.format.labels, task.format.words))
    return [
        Annotation(spans=tuple((word_of[k], " ".join(text.split()[a : b + 1])) for k, a, b in get_entities(tags)))
        for text, tags in zip(task.val_texts, task.gold)
    ]


def test_entity_task_scores_the_gold_entities_as_perfect_and_an_unusable_answer_as_tagging_nothing(entities):
    assert len(entities.val_texts) == 40 and entities.metric == "f1"
    annotations = gold_annotations(entities)
    assert entities.scores(entities.teacher_predictions(annotations)).metrics()["f1"] == 1.0
    spoiled = [Annotation(reason="unparsed_lines") for _ in annotations]
    assert entities.scores(entities.teacher_predictions(spoiled)).metrics()["f1"] == 0.0
    counts = entities.counts(entities.teacher_predictions(annotations))
    assert counts == entities.annotation_counts(annotations) and sum(counts) == sum(len(a.spans) for a in annotations)
    assert entities.count_names == ["location", "organisation", "person"]


def test_entity_examples_answer_in_entity_lines_and_are_not_class_balanced(entities):
    post = "I saw Adele in Leeds"
    annotation = Annotation(spans=(("person", "Adele"), ("location", "Leeds")))
    frame = examples_frame(entities, [post, "nothing here"], [annotation, Annotation()], "train", "t")
    assert frame["response"].tolist() == ["person: Adele\nlocation: Leeds", "none"]
    assert frame["class_label"].isna().all()
    assert frame.loc[0, "prompt"] == task_format("btc").messages(post)[-1]["content"]
    assert steps_within_budget(frame, RECIPE, 64) == 1


def test_the_grids_learning_rate_is_the_recipes_and_is_recorded():
    from dataclasses import asdict

    grid = Grid(("reference",), (16,), (0,), ("none",), ("default",), 12, (0.0,), 1.0, 0, 2, 3e-4)
    assert grid.recipe.learning_rate == 3e-4 and grid.recipe.model_dump() | {
        "learning_rate": RECIPE.learning_rate
    } == (RECIPE.model_dump())
    assert asdict(grid)["learning_rate"] == 3e-4
    assert Grid(("reference",), (16,), (0,), ("none",), ("default",), 12).recipe == RECIPE


def test_options_replace_the_presets_fields_and_the_ner_task_runs_without_the_kd_arm():
    parser = build_parser()
    assert grid_from(parser.parse_args([]), parser, cuda=False) == GRIDS["cpu"]
    args = parser.parse_args(["--sizes", "16", "--kd-alpha", "0", "0.5", "0", "--held-out-posts", "10"])
    grid = grid_from(args, parser, cuda=False)
    assert list(grid.sizes) == [16] and grid.kd_alphas == (0.0, 0.5) and grid.held_out_posts == 10
    assert (grid.teachers, grid.seeds, grid.max_steps) == (GRIDS["cpu"].teachers, GRIDS["cpu"].seeds, 64)
    ner = grid_from(parser.parse_args(["--task", "btc"]), parser, cuda=True)
    assert ner.kd_alphas == (0.0,) and ner.held_out_posts == 0 and ner.sizes == GRIDS["gpu"].sizes
    for refused in (["--task", "btc", "--kd-alpha", "0.5"], ["--kd-alpha", "0.5", "--held-out-posts", "0"]):
        with pytest.raises(SystemExit):
            grid_from(parser.parse_args(refused), parser, cuda=False)
