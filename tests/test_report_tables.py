"""The report's distillation table, confusion matrices and example posts, from a hand-made evaluation result."""

import numpy as np

from opengrok_dagster.evaluation.bootstrap import bootstrap, paired_difference, resample_indices
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.metrics import ClassificationScores
from opengrok_dagster.evaluation.report import build_report
from opengrok_dagster.evaluation.report.tables import confusion_table, distillation_table, examples_table
from opengrok_dagster.evaluation.results import (
    EvaluationResults,
    ItemAnswers,
    ModelScore,
    PairedComparison,
    TaskResult,
)
from opengrok_dagster.tasks.specs import task_spec


WORDS = ["negative", "neutral", "positive"]
GOLD = np.array([0, 0, 1, 1, 2, 2, 2, 1])
PREDICTIONS = {
    "base": np.array([0, 0, 0, 0, 0, 0, 0, 0]),
    "lora:none": np.array([0, 1, 1, 1, 2, 2, 0, 1]),
    "teacher": np.array([0, 0, 1, -1, 2, 2, 2, 1]),
}


def results() -> EvaluationResults:
    config = EvaluationConfig(resamples=200, example_posts=3)
    indices = resample_indices(len(GOLD), config.resamples, 0)
    texts = [f"post number {i} " + "x" * (200 if i == 3 else 0) for i in range(len(GOLD))]
    task = TaskResult(
        task_spec("tweeteval_sentiment"), "tweeteval_sentiment", "macro_recall", "val", "v1", 2000, len(GOLD)
    )
    task.answers = ItemAnswers(texts, GOLD, WORDS, False, dict(PREDICTIONS))
    for model, predicted in PREDICTIONS.items():
        task.scores.append(ModelScore(model, bootstrap(ClassificationScores(GOLD, predicted, 3), indices), len(GOLD)))
    by_model = {s.model: s.distribution for s in task.scores}
    task.comparisons.append(
        PairedComparison(
            "lora:none",
            "base",
            "macro_recall",
            paired_difference(by_model["lora:none"], by_model["base"], "macro_recall"),
        )
    )
    return EvaluationResults(config, None, [task], [], [], 1.0)


def test_confusion_matrix_counts_gold_rows_against_answers_with_an_unparseable_column():
    answers = results().tasks[0].answers
    teacher = confusion_table(answers, "teacher")
    assert list(teacher.columns) == ["gold \\ answer", *WORDS, "unparseable"]
    assert teacher[WORDS + ["unparseable"]].to_numpy().tolist() == [[2, 0, 0, 0], [0, 2, 0, 1], [0, 0, 3, 0]]
    assert "unparseable" not in confusion_table(answers, "base").columns  # local models always answer
    assert confusion_table(answers, "base")["negative"].tolist() == [2, 3, 3]


def test_examples_show_the_posts_the_models_disagree_on_with_every_answer():
    table = examples_table(results().tasks[0].answers, 3)
    assert len(table) == 3 and list(table.columns) == ["post", "gold", "base", "lora:none", "teacher"]
    assert table["post"].str.split().str[2].tolist() == [
        "1",
        "2",
        "3",
    ]  # item 3 has three answers; then the first with two
    assert (
        table["post"].str.len().max() <= 140
        and table.loc[table["post"].str.contains("number 3"), "teacher"].item() == "(unparseable)"
    )


def test_distillation_table_puts_the_difference_beside_base_teacher_and_student():
    row = distillation_table(results()).iloc[0]
    assert (row["task"], row["student"], row["n"]) == ("tweeteval_sentiment", "lora:none", len(GOLD))
    assert (
        row["base"].startswith("0.333")
        and row["student score"].startswith("0.722")
        and row["teacher"].startswith("0.889")
    )
    assert row["student - base"].startswith("0.389 [")
    markdown = build_report(results()).markdown()
    assert "Did distillation help?" in markdown and "Confusion matrices" in markdown and "lora:none:" in markdown


def test_distillation_table_has_a_row_per_scoring_both_models_have_the_headline_first():
    evaluated = results()
    task = evaluated.tasks[0]
    indices = resample_indices(len(GOLD), evaluated.config.resamples, 0)
    calibrated = {
        "base": bootstrap(ClassificationScores(GOLD, np.array([1, 1, 1, 1, 2, 2, 2, 1]), 3), indices),
        "lora:none": bootstrap(ClassificationScores(GOLD, GOLD, 3), indices),
    }
    task.all_scores = [*task.scores] + [
        ModelScore(model, distribution, len(GOLD), scoring="calibrated") for model, distribution in calibrated.items()
    ]
    difference = paired_difference(calibrated["lora:none"], calibrated["base"], "macro_recall")
    task.all_comparisons = [
        PairedComparison("lora:none", "base", "macro_recall", difference, scoring="calibrated"),
        *task.comparisons,
    ]
    table = distillation_table(evaluated)
    assert table["scoring"].tolist() == ["generated", "calibrated"]
    generated, by_likelihood = table.iloc[0], table.iloc[1]
    assert generated["student - base"].startswith("0.389 [")
    # the teacher is scored by generation only: no teacher figure beside a likelihood scoring
    assert (by_likelihood["base"][:5], by_likelihood["student score"][:5]) == ("0.667", "1.000")
    assert by_likelihood["student - base"].startswith("0.333 [") and by_likelihood["teacher"] == "-"
