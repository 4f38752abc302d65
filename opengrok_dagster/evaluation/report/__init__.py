"""The evaluation report: the sections in the order a reader meets them, built from the results.

``frame`` holds the numbers as a long DataFrame, ``tables`` the report's tables, ``plots`` its figures,
``spend`` the teacher-spend section and ``render`` the Markdown/HTML rendering and publication.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from opengrok_dagster.collect.spend import TeacherSpend
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.report.plots import DIFFERENCE_PLOT, MAIN_PLOT, plot_differences, plot_primary
from opengrok_dagster.evaluation.report.render import Report
from opengrok_dagster.evaluation.report.spend import spend_section
from opengrok_dagster.evaluation.report.tables import (
    ablation_table,
    confusion_table,
    data_table,
    distillation_table,
    examples_table,
    references_table,
    scoring_choice_table,
    scorings_table,
    summary_table,
    task_table,
)
from opengrok_dagster.evaluation.results import EvaluationResults, TaskResult
from opengrok_dagster.evaluation.scoring import CLASSIFIER


def build_report(results: EvaluationResults, spend: TeacherSpend | None = None) -> Report:
    """The whole report; ``spend`` (what collection cost) adds the "Teacher spend" section."""
    cfg = results.config
    report = Report()
    _overview(report, results)
    if results.notes:
        report.add("h2", "Notes")
        report.add("list", results.notes)
    report.add("h2", "What was compared")
    report.add("table", pd.DataFrame(results.models))
    if spend is not None:
        report.blocks.extend(spend_section(spend, results).blocks)
    report.add("h2", "Data")
    data_dir = str(results.data_dir) if results.data_dir else "none found"
    report.add(
        "p",
        f"Data directory: {data_dir}. Items are sampled without replacement with seed {cfg.seed}; "
        "sizes are configurable (0 = the whole split).",
    )
    report.add("table", data_table(results))
    for task in results.tasks:
        _task_section(report, task, cfg)
    differences = plot_differences(results)
    if differences:
        report.images[DIFFERENCE_PLOT] = differences
        report.add("h2", "Paired differences")
        report.add("image", DIFFERENCE_PLOT)
    report.add("h2", "Method")
    report.add("list", _method(cfg))
    return report


def _overview(report: Report, results: EvaluationResults) -> None:
    """The title, how the numbers were made, the summary table, whether distillation helped, and the main plot."""
    cfg = results.config
    report.add("h1", "OpenGrok evaluation report")
    report.add(
        "p",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {results.seconds:.0f}s. Seed {cfg.seed}; "
        f"{cfg.resamples} bootstrap resamples; {int(cfg.confidence * 100)}% percentile intervals in brackets; "
        "paired differences use the same resampled items for both models. Headline scoring: "
        f"{cfg.headline_scoring} (every table and plot but the scorings side by side; TF-IDF baselines are "
        "classifiers)"
        + (
            "; this run is self-distillation (the teacher is the student's own base checkpoint), so no "
            "student-versus-teacher claim is made."
            if results.self_distillation
            else "."
        ),
    )
    report.add("h2", "Summary (primary metric per task)")
    report.add("table", summary_table(results))
    distillation = distillation_table(results)
    if len(distillation):
        report.add("h2", "Did distillation help? (paired difference student - base)")
        report.add(
            "p",
            "Each adapter against the untrained base student on the same items and resamples, under each "
            f"scoring both have ({results.config.headline_scoring}, the headline, first); an interval above 0 means "
            "the distilled student is better. Promotion reads, per adapter, the scoring its labels come from "
            "(calibrated or raw, chosen on tuning posts: see each task). The teacher's score is shown beside them "
            "where it has that scoring: it is what distillation could at best transfer.",
        )
        report.add("table", distillation)
    report.images[MAIN_PLOT] = plot_primary(results) if any(t.scores for t in results.tasks) else b""
    if report.images[MAIN_PLOT]:
        report.add("image", MAIN_PLOT)
    else:
        del report.images[MAIN_PLOT]


def _task_section(report: Report, task: TaskResult, cfg: EvaluationConfig) -> None:
    """One task: its scores, scorings side by side, ablations, external references, confusion matrices and
    example posts, and its notes."""
    report.add("h2", f"Task: {task.name}")
    report.add("p", f"{task.n} items from {task.source}; primary metric {task.primary_metric}.")
    report.add("table", task_table(task, cfg.confidence))
    if len({s.scoring for s in task.all_scores} - {CLASSIFIER}) > 1:
        report.add("h3", f"Scorings side by side ({task.primary_metric})")
        report.add("table", scorings_table(task, cfg.confidence))
    if task.scoring_choices:
        tuning = task.scoring_choices[0].n
        report.add(
            "h3",
            f"Label scoring of each model's labels for post_labels ({task.primary_metric} on {tuning} tuning posts)",
        )
        report.add(
            "p",
            f"Chosen per model on {tuning} posts of the split that none of the reported items is, so the choice is "
            "not made on the numbers above; promotion compares each adapter with the base under its choice.",
        )
        report.add("table", scoring_choice_table(task))
    if task.comparisons:
        report.add("h3", "Ablation: paired bootstrap differences (model minus compared_to)")
        report.add("table", ablation_table(task))
    if task.spec and task.spec.references:
        report.add(
            "h3",
            "External reference (published on the test split; not measured here, not comparable to a small validation sample)",
        )
        report.add("table", references_table(task))
    if task.answers is not None:
        if not task.answers.multi_label:
            report.add("h3", "Confusion matrices (rows: gold label; columns: the model's answer)")
            for model in task.answers.predictions:
                report.add("p", f"{model}:")
                report.add("table", confusion_table(task.answers, model))
        report.add("h3", "Example posts with each model's answer (the items the models disagree on most)")
        report.add("table", examples_table(task.answers, cfg.example_posts))
    if task.notes:
        report.add("list", task.notes)


def _method(cfg: EvaluationConfig) -> list[str]:
    """How every number of the report was made."""
    return [
        f"Classification is scored {', '.join(cfg.scorings)} for local models (base student and each LoRA "
        "checkpoint), side by side: 'generated' parses the model's greedy answer for a label exactly as API models' "
        "answers are parsed; 'raw' picks the label whose tokens are most likely after the prompt; 'calibrated' "
        "divides each label's likelihood by its mean likelihood after content-free posts ('N/A', '', '[MASK]'), so "
        "a label prior does not decide (contextual calibration, Zhao et al. 2021). API models are scored by "
        f"generation only. The headline tables use {cfg.headline_scoring} for every model they compare.",
        "Per class: recall:<label> is the class's recall, predicted:<label> the share of all answers naming it; "
        "macro recall hides a class a model never answers.",
        f"Multi-label topics: the labels' likelihoods are normalised over the label set; the top label and every label "
        f"with probability >= {cfg.topic_threshold} are predicted.",
        "API models (teacher, extra endpoints) answer the same prompt with greedy decoding; an answer naming no label "
        "(or several, for single-label tasks) or a failed request is unparseable and counts as wrong.",
        "NER by generation of 'type: entity' lines, mapped back onto the post's tokens; scored at entity level with "
        "seqeval's micro F1. Its unparseable rate is the share of answer lines that could not be read or located.",
        "Baselines: TF-IDF (1-2 grams) + logistic regression on the task's train split (tfidf-lr:gold), and on the "
        "teacher's labels of a sample of the train texts (tfidf-lr:teacher).",
        "Teacher agreement: sentence chrF (sacrebleu) of the student's greedy answer vs the teacher's held-out response, "
        "and the student's perplexity on that response.",
    ]
