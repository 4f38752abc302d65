"""The report: the numbers as a long DataFrame, and the same content as Markdown and self-contained HTML.

Both renderings come from one list of blocks, so they cannot drift apart. Published numbers appear only in
the "external reference" column and table, never among our measurements.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from opengrok_dagster.collect.spend import PRICE_VARIABLES, SPEND_VIEWS, SpendLine, TeacherSpend
from opengrok_dagster.evaluation.api import Usage
from opengrok_dagster.evaluation.compared_models import TEACHER
from opengrok_dagster.evaluation.results import EvaluationResults, ItemAnswers, TaskResult
from opengrok_dagster.evaluation.scoring import CLASSIFIER
from opengrok_dagster.publish import publishing


REPORT_MARKDOWN, REPORT_HTML = "report.md", "report.html"  # in the layout's reports_dir
MAIN_PLOT = "primary_metrics.png"
DIFFERENCE_PLOT = "paired_differences.png"
EXAMPLE_POST_CHARS = 140


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _interval(value: float, low: float, high: float) -> str:
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


def results_frame(results: EvaluationResults) -> pd.DataFrame:
    """One row per (task, model, metric) score, per paired difference, and per external reference."""
    cfg = results.config
    rows = []
    for task in results.tasks:
        common = {
            "task": task.name,
            "dataset": task.source,
            "data_version": task.data_version,
            "n": task.n,
            "seed": cfg.seed,
            "resamples": cfg.resamples,
            "confidence": cfg.confidence,
        }
        for score in task.all_scores or task.scores:
            for metric in score.distribution.point:
                estimate = score.distribution.estimate(metric, cfg.confidence)
                rows.append(
                    common
                    | {
                        "section": "score",
                        "model": score.model,
                        "scoring": score.scoring,
                        "headline": score.scoring in (cfg.headline_scoring, CLASSIFIER),
                        "metric": metric,
                        "primary": metric == task.primary_metric,
                        "value": estimate.value,
                        "ci_low": estimate.low,
                        "ci_high": estimate.high,
                        "unparseable_rate": score.unparseable_rate,
                    }
                )
        for comparison in task.all_comparisons or task.comparisons:
            d = comparison.difference
            rows.append(
                common
                | {
                    "section": "paired_difference",
                    "model": comparison.model,
                    "scoring": comparison.scoring,
                    "headline": comparison.scoring == cfg.headline_scoring,
                    "compared_to": comparison.compared_to,
                    "metric": comparison.metric,
                    "primary": comparison.metric == task.primary_metric,
                    "value": d.value,
                    "ci_low": d.low,
                    "ci_high": d.high,
                    "p_value": d.p_value,
                }
            )
        rows += _confusion_rows(task, common)
        for reference in task.spec.references if task.spec else ():
            rows.append(
                {
                    "task": task.name,
                    "section": "external_reference",
                    "model": reference.system,
                    "metric": task.primary_metric,
                    "primary": True,
                    "external_reference": reference.value,
                    "reference_source": reference.source,
                }
            )
    columns = [
        "section",
        "task",
        "model",
        "scoring",
        "headline",
        "compared_to",
        "metric",
        "primary",
        "value",
        "ci_low",
        "ci_high",
        "p_value",
        "n",
        "unparseable_rate",
        "external_reference",
        "reference_source",
        "dataset",
        "data_version",
        "seed",
        "resamples",
        "confidence",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"n": "Int64", "seed": "Int64", "resamples": "Int64", "primary": bool})


def summary_table(results: EvaluationResults) -> pd.DataFrame:
    """Task x model on each task's primary metric, with the interval, and the external reference column last."""
    models = list(dict.fromkeys(s.model for t in results.tasks for s in t.scores))
    rows = []
    for task in results.tasks:
        row = {"task": task.name, "metric": task.primary_metric, "n": task.n}
        by_model = {
            s.model: s.distribution.estimate(task.primary_metric, results.config.confidence) for s in task.scores
        }
        for model in models:
            e = by_model.get(model)
            row[model] = _interval(e.value, e.low, e.high) if e else "-"
        references = task.spec.references if task.spec else ()
        row["external reference (published, test set)"] = (
            "; ".join(f"{r.system} {r.value:.3f}" for r in references) or "-"
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _confusion_rows(task: TaskResult, common: dict) -> list[dict]:
    """Confusion counts of a task scored against another model's labels instead of gold (``spec`` None, e.g. the
    teacher's labels of the user's posts), one row per (model, label -> answer) cell: what no interval shows."""
    if task.spec is not None or task.answers is None or task.answers.multi_label:
        return []
    rows = []
    for model in task.answers.predictions:
        table = confusion_table(task.answers, model).set_index("gold \\ answer")
        rows += [
            common | {"section": "confusion", "model": model, "metric": f"{gold} -> {answer}", "value": float(count)}
            for gold, counts in table.iterrows()
            for answer, count in counts.items()
            if count
        ]
    return rows


def distillation_table(results: EvaluationResults) -> pd.DataFrame:
    """Per task and adapter: did distillation help? The paired difference student - base with its interval (and
    the interval's half-width, the effect the sample can resolve), beside the base's, the teacher's and the
    student's own scores on the primary metric."""
    confidence = results.config.confidence
    rows = []
    for task in results.tasks:
        if task.spec is None:
            continue
        by_model = {s.model: s.distribution.estimate(task.primary_metric, confidence) for s in task.scores}
        teacher, base = by_model.get(TEACHER), by_model.get("base")
        teacher_cell = _interval(teacher.value, teacher.low, teacher.high) if teacher else "-"
        if results.self_distillation:
            teacher_cell = "self-distillation: not compared"
        for c in task.comparisons:
            if c.compared_to != "base" or c.metric != task.primary_metric:
                continue
            student, d = by_model[c.model], c.difference
            rows.append(
                {
                    "task": task.name,
                    "metric": task.primary_metric,
                    "n": task.n,
                    "student": c.model,
                    "base": _interval(base.value, base.low, base.high) if base else "-",
                    "teacher": teacher_cell,
                    "student score": _interval(student.value, student.low, student.high),
                    "student - base": _interval(d.value, d.low, d.high),
                    "+- (half-width)": _fmt((d.high - d.low) / 2),
                    "p_value": _fmt(d.p_value),
                }
            )
    return pd.DataFrame(rows)


def scorings_table(task: TaskResult, confidence: float) -> pd.DataFrame:
    """Every model under every scoring that applies to it, on the primary metric, side by side ("-": the scoring
    does not apply, e.g. label likelihood for an API model without logprobs)."""
    scorings = list(dict.fromkeys(s.scoring for s in task.all_scores))
    rows: dict[str, dict] = {}
    for score in task.all_scores:
        e = score.distribution.estimate(task.primary_metric, confidence)
        rows.setdefault(score.model, {"model": score.model} | dict.fromkeys(scorings, "-"))[score.scoring] = _interval(
            e.value, e.low, e.high
        )
    return pd.DataFrame(list(rows.values()))


def confusion_table(answers: ItemAnswers, model: str) -> pd.DataFrame:
    """Gold label (rows) x the model's answer (columns; 'unparseable' for an answer naming no single label)."""
    k = len(answers.words)
    predicted = answers.predictions[model]
    counts = np.zeros((k, k + 1), dtype=int)
    np.add.at(counts, (answers.gold, np.where(predicted < 0, k, predicted)), 1)
    frame = pd.DataFrame(counts, columns=[*answers.words, "unparseable"])
    if not counts[:, k].any():
        frame = frame.drop(columns="unparseable")
    frame.insert(0, "gold \\ answer", answers.words)
    return frame


def _answer_text(answers: ItemAnswers, row: int, predicted) -> str:
    if answers.multi_label:
        return ", ".join(answers.words[i] for i in np.flatnonzero(predicted[row])) or "(none)"
    return answers.words[predicted[row]] if predicted[row] >= 0 else "(unparseable)"


def example_rows(answers: ItemAnswers, count: int) -> list[int]:
    """Items on which the models disagree most (ties: item order), so the examples show what changed."""

    def spread(row: int) -> int:
        return len({_answer_text(answers, row, p) for p in answers.predictions.values()})

    return sorted(sorted(range(len(answers.texts)), key=lambda row: -spread(row))[:count])


def examples_table(answers: ItemAnswers, count: int) -> pd.DataFrame:
    rows = []
    for row in example_rows(answers, count):
        text = " ".join(answers.texts[row].split())
        gold = (
            ", ".join(answers.words[i] for i in np.flatnonzero(answers.gold[row]))
            if answers.multi_label
            else answers.words[answers.gold[row]]
        )
        rows.append(
            {
                "post": text if len(text) <= EXAMPLE_POST_CHARS else text[: EXAMPLE_POST_CHARS - 1] + "\u2026",
                "gold": gold,
            }
            | {model: _answer_text(answers, row, predicted) for model, predicted in answers.predictions.items()}
        )
    return pd.DataFrame(rows)


def _plot_primary(results: EvaluationResults) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in results.tasks if t.scores]
    fig, axes = plt.subplots(
        len(tasks), 1, figsize=(7, 1.2 + 0.35 * sum(len(t.scores) for t in tasks) + 0.6 * len(tasks)), squeeze=False
    )
    for ax, task in zip(axes[:, 0], tasks):
        estimates = [
            (s.model, s.distribution.estimate(task.primary_metric, results.config.confidence)) for s in task.scores
        ]
        values = np.array([e.value for _, e in estimates])
        errors = np.array([[max(e.value - e.low, 0), max(e.high - e.value, 0)] for _, e in estimates]).T
        positions = np.arange(len(estimates))
        ax.barh(positions, np.nan_to_num(values), xerr=np.nan_to_num(errors), color="#4878a8", capsize=3)
        ax.set_yticks(positions, [m for m, _ in estimates])
        ax.invert_yaxis()
        ax.set_title(
            f"{task.name}: {task.primary_metric} (n={task.n}, {int(results.config.confidence * 100)}% CI)", fontsize=9
        )
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _png(fig)


def _plot_differences(results: EvaluationResults) -> bytes | None:
    comparisons = [(t, c) for t in results.tasks for c in t.comparisons if c.metric == t.primary_metric]
    if not comparisons:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 1 + 0.3 * len(comparisons)))
    for row, (_, c) in enumerate(comparisons):
        d = c.difference
        ax.errorbar(
            d.value,
            row,
            xerr=[[max(d.value - d.low, 0)], [max(d.high - d.value, 0)]],
            fmt="o",
            color="#a84848",
            capsize=3,
        )
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(
        range(len(comparisons)), [f"{t.name}: {c.model} - {c.compared_to}" for t, c in comparisons], fontsize=7
    )
    ax.invert_yaxis()
    ax.set_title("Paired bootstrap differences on the primary metric", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _escape_pipe(value):
    return value.replace("|", "\\|") if isinstance(value, str) else value


def _escaped_pipes(table: pd.DataFrame) -> pd.DataFrame:
    """A '|' in a cell (a partition key, a post) would split a Markdown table's column: escape it."""
    return table.map(_escape_pipe).rename(columns=_escape_pipe)


@dataclass
class Report:
    blocks: list[tuple[str, object]] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def add(self, kind: str, content) -> None:
        self.blocks.append((kind, content))

    def markdown(self) -> str:
        parts = []
        for kind, content in self.blocks:
            if kind in ("h1", "h2", "h3"):
                parts.append(f"{'#' * int(kind[1])} {content}")
            elif kind == "p":
                parts.append(content)
            elif kind == "list":
                parts.append("\n".join(f"- {item}" for item in content))
            elif kind == "table":
                parts.append(_escaped_pipes(content).to_markdown(index=False) if len(content) else "_(none)_")
            elif kind == "image":
                parts.append(f"![{content}]({content})")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        body = []
        for kind, content in self.blocks:
            if kind in ("h1", "h2", "h3"):
                body.append(f"<{kind}>{html.escape(content)}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(content)}</p>")
            elif kind == "list":
                body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in content) + "</ul>")
            elif kind == "table":
                body.append(
                    content.to_html(index=False, escape=True, border=0) if len(content) else "<p><em>(none)</em></p>"
                )
            elif kind == "image":
                data = base64.b64encode(self.images[content]).decode()
                body.append(f'<img alt="{html.escape(content)}" src="data:image/png;base64,{data}">')
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}img{max-width:100%}"
        )
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>OpenGrok evaluation report</title><style>{style}</style></head><body>\n'
            + "\n".join(body)
            + "\n</body></html>\n"
        )


def _task_table(task: TaskResult, confidence: float) -> pd.DataFrame:
    rows = []
    for score in task.scores:
        row = {"model": score.model}
        for metric in score.distribution.point:
            e = score.distribution.estimate(metric, confidence)
            row[metric] = _interval(e.value, e.low, e.high)
        row["unparseable"] = _fmt(score.unparseable_rate)
        rows.append(row)
    return pd.DataFrame(rows)


SPEND_VIEW_TITLES = {
    "teacher": "By teacher",
    "partition": "By collection partition (round|topic, as Dagster names it)",
    "run": "By run (the Dagster run that collected it)",
    "day": "By UTC day (when the response arrived)",
}
RUN_NOT_RECORDED = "(not recorded: collected before the store kept run ids)"


def _usd(value: float | None) -> str:
    return "not priced" if value is None else f"${value:.6f}"


def _spend_table(lines: list[SpendLine], view: str, spend: TeacherSpend) -> pd.DataFrame:
    names = {"teacher": spend.teacher_name, "run": lambda key: key or RUN_NOT_RECORDED}
    return pd.DataFrame(
        [
            {
                view: names.get(view, str)(line.key),
                "requests": line.requests,
                "errors": line.errors,
                "prompt tokens": line.prompt_tokens,
                "completion tokens": line.completion_tokens,
                "USD": _usd(line.usd),
                "batch requests": line.batch_requests,
                "batch USD": _usd(line.batch_usd),
            }
            for line in lines
        ]
    )


def _evaluation_usage_table(usage: dict[str, Usage], models: list[dict]) -> pd.DataFrame:
    what = {m["model"]: m["source"] for m in models}
    return pd.DataFrame(
        [
            {
                "model": name,
                "source": what.get(name, ""),
                "requests": u.requests,
                "answers reused": u.reused,
                "prompt tokens": u.prompt_tokens,
                "completion tokens": u.completion_tokens,
                "USD": _usd(u.usd),
            }
            for name, u in usage.items()
        ]
    )


def spend_section(spend: TeacherSpend, results: EvaluationResults) -> Report:
    """The "Teacher spend" section: what collection cost (total, per teacher, partition, run and UTC day, and
    the batch-priced share), and this evaluation's own requests to API models."""
    section = Report()
    section.add("h2", "Teacher spend")
    section.add("p", f"Teacher: {spend.teacher}")
    collection = spend.collection
    if collection is None:
        section.add(
            "p",
            f"Collection: no teacher response was collected on this home (no response store at {spend.store}), "
            "so nothing was spent.",
        )
    elif not collection.total.requests:
        section.add("p", f"Collection: the response store {collection.store} holds no response, so nothing was spent.")
    else:
        total = collection.total
        section.add(
            "p",
            f"Collection: {_usd(total.usd)} for {total.requests} requests ({total.errors} ended in an error), "
            f"{total.prompt_tokens} prompt and {total.completion_tokens} completion tokens; {_usd(total.batch_usd)} "
            f"of it for {total.batch_requests} requests at the batch price. Each cost is as priced when its response "
            f"arrived (from {collection.store}).",
        )
        if not collection.priced:
            section.add(
                "p",
                f"No stored response is priced: all {total.requests} cost $0 (collected from the embedded stand-in "
                f"teacher, or with no prices set: {PRICE_VARIABLES}, USD per 1M tokens).",
            )
        if collection.unsettled_requests:
            section.add(
                "p",
                f"{collection.unsettled_requests} budget reservations were never settled (requests in flight, or of "
                f"a run killed while they were); the budgets count them at their worst case, "
                f"{_usd(collection.unsettled_usd)}, as the provider may have billed them.",
            )
        for view in SPEND_VIEWS:
            section.add("h3", SPEND_VIEW_TITLES[view])
            section.add("table", _spend_table(collection.by[view], view, spend))
    section.add("h3", "This evaluation's requests to API models")
    if results.api_usage:
        section.add("table", _evaluation_usage_table(results.api_usage, results.models))
        section.add(
            "p",
            "The teacher's requests are priced at its configured prices; extra endpoints have no configured price "
            "and are not priced. Reused answers were not asked again and cost nothing in this run.",
        )
    else:
        section.add("p", "The evaluation sent no request to an API model.")
    return section


def build_report(
    results: EvaluationResults, checkpoint_notes: list[str] | None = None, spend: TeacherSpend | None = None
) -> Report:
    # Long on purpose: the report's sections in the order a reader meets them; each is a few calls.
    cfg = results.config
    report = Report()
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
            "Each adapter against the untrained base student on the same items and resamples; an interval "
            "above 0 means the distilled student is better. The teacher's score is shown beside them: it "
            "is what distillation could at best transfer.",
        )
        report.add("table", distillation)
    report.images[MAIN_PLOT] = _plot_primary(results) if any(t.scores for t in results.tasks) else b""
    if report.images[MAIN_PLOT]:
        report.add("image", MAIN_PLOT)
    else:
        del report.images[MAIN_PLOT]
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
    report.add(
        "table",
        pd.DataFrame(
            [
                {
                    "task": t.name,
                    "file": t.source,
                    "data version (sha256)": t.data_version,
                    "items in split": t.total_items,
                    "items evaluated": t.n,
                }
                for t in results.tasks
            ]
        ),
    )
    for task in results.tasks:
        report.add("h2", f"Task: {task.name}")
        report.add("p", f"{task.n} items from {task.source}; primary metric {task.primary_metric}.")
        report.add("table", _task_table(task, cfg.confidence))
        if len({s.scoring for s in task.all_scores} - {CLASSIFIER}) > 1:
            report.add("h3", f"Scorings side by side ({task.primary_metric})")
            report.add("table", scorings_table(task, cfg.confidence))
        if task.comparisons:
            report.add("h3", "Ablation: paired bootstrap differences (model minus compared_to)")
            report.add(
                "table",
                pd.DataFrame(
                    [
                        {
                            "model": c.model,
                            "compared_to": c.compared_to,
                            "metric": c.metric,
                            "difference": _interval(c.difference.value, c.difference.low, c.difference.high),
                            "p_value": _fmt(c.difference.p_value),
                        }
                        for c in task.comparisons
                    ]
                ),
            )
        references = task.spec.references if task.spec else ()
        if references:
            report.add(
                "h3",
                "External reference (published on the test split; not measured here, not comparable to a small validation sample)",
            )
            report.add(
                "table",
                pd.DataFrame(
                    [
                        {"system": r.system, task.primary_metric: f"{r.value:.3f}", "source": r.source}
                        for r in references
                    ]
                ),
            )
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
    differences = _plot_differences(results)
    if differences:
        report.images[DIFFERENCE_PLOT] = differences
        report.add("h2", "Paired differences")
        report.add("image", DIFFERENCE_PLOT)
    report.add("h2", "Method")
    report.add(
        "list",
        [
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
        ],
    )
    return report


def publish_report(report_dir: Path, report: Report, frame: pd.DataFrame) -> dict[str, Path]:
    """Write report.md, report.html, the plots and results.parquet; each file appears whole or not at all."""
    report_dir = Path(report_dir)
    files = {
        "markdown": REPORT_MARKDOWN,
        "html": REPORT_HTML,
        "parquet": "results.parquet",
        **{name: name for name in report.images},
    }
    published = {key: report_dir / name for key, name in files.items()}
    with publishing(*published.values()) as partials:
        partial = dict(zip(published, partials))
        partial["markdown"].write_text(report.markdown(), encoding="utf-8")
        partial["html"].write_text(report.html(), encoding="utf-8")
        frame.to_parquet(partial["parquet"], index=False)
        for name, data in report.images.items():
            partial[name].write_bytes(data)
    return published
