"""Evaluation: the student (base and each LoRA mask mode), the teacher, extra endpoints and cheap baselines,
on SNS tasks and on agreement with the teacher's held-out responses, published as a report."""

import math

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from assets.config import config_from
from assets.metadata import png_markdown
from assets.versioning import asset_code_version
from opengrok_dagster.automation import FOLLOWS_UPSTREAM_DATA
from opengrok_dagster.collect.spend import TeacherSpend, pricing_description
from opengrok_dagster.evaluation.answers import AnswerCache
from opengrok_dagster.evaluation.api import ApiModel, EndpointSpec
from opengrok_dagster.evaluation.cards import eval_results_for
from opengrok_dagster.evaluation.compared_models import TEACHER
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.local import LocalStudent, find_checkpoints, model_identity
from opengrok_dagster.evaluation.report import build_report
from opengrok_dagster.evaluation.report.frame import results_frame
from opengrok_dagster.evaluation.report.plots import MAIN_PLOT
from opengrok_dagster.evaluation.report.render import publish_report
from opengrok_dagster.evaluation.report.spend import spend_section
from opengrok_dagster.evaluation.report.tables import summary_table
from opengrok_dagster.evaluation.runner import Evaluation
from opengrok_dagster.instance import GPU_POOL
from opengrok_dagster.labelling.agreement import posts_agreement
from opengrok_dagster.labelling.cost import cost_section, measure_teacher, student_line, teacher_line
from opengrok_dagster.profiles import EVAL_REPORT, with_profile_defaults
from opengrok_dagster.tasks.datasets import DatasetError
from opengrok_dagster.training import MASK_MODES
from opengrok_dagster.training.card import record_eval_results
from opengrok_dagster.training.device import DeviceUnavailableError
from opengrok_dagster.training.manifest import adapter_dirs
from resources import OpenGrokPaths, StudentResource, TeacherResource
from resources.teacher import EMBEDDED_TEACHER_LABELS


class EvaluationEndpoint(config_from(EndpointSpec)):
    """An extra OpenAI-compatible model to compare (fields from ``EndpointSpec``)."""


@with_profile_defaults(EVAL_REPORT)  # opengrok_dagster/config/profiles/: sample sizes and device of the deployment
class EvalReportConfig(config_from(EvaluationConfig, exclude=("endpoints",))):
    """The evaluation's settings (from ``EvaluationConfig``), and which API models and cached answers it uses."""

    include_teacher: bool = Field(
        default=True, description="Evaluate the teacher resource (the embedded teacher starts a local server)."
    )
    reuse_api_answers: bool = Field(
        default=True,
        description="Reuse the answers API models gave to the same prompts in earlier runs ($OPENGROK_HOME/eval_answers.sqlite; "
        "greedy decoding, so the same model answers the same): an unchanged rerun sends no requests. Set false to ask "
        "again, e.g. when a remote model changed behind the same id.",
    )
    endpoints: list[EvaluationEndpoint] = Field(
        default=[], description=EvaluationConfig.model_fields["endpoints"].description
    )


def _teacher_model(teacher: TeacherResource) -> ApiModel:
    return ApiModel(
        TEACHER,
        teacher.endpoint,
        teacher.description(),
        teacher.client_limits(),
        teacher.prices(),
        teacher.base_checkpoint,
    )


def _teacher_spend(teacher: TeacherResource, paths: OpenGrokPaths) -> TeacherSpend:
    """What collection cost, read from the response store, under a name that says which teacher it is."""
    description = pricing_description(
        teacher.description(), teacher.prices(), teacher.mode == "embedded", teacher.batch_price_factor
    )
    return TeacherSpend.read(description, paths.layout.response_store_path, stand_in_labels=EMBEDDED_TEACHER_LABELS)


# The task whose posts/s stands for labelling: the one post_labels labels by default.
COSTED_TASK = "tweeteval_sentiment"


def _cost_section(results, filtered: pd.DataFrame, teacher: TeacherResource, paths: OpenGrokPaths, student):
    """1M posts by the student at the evaluation's measured rate and by the teacher at its configured limits."""
    rates = results.throughput.get("posts_per_second", {})
    student_cost = (
        student_line(
            f"student ({model_identity(student.model_path())})", rates[COSTED_TASK], results.throughput["device"]
        )
        if COSTED_TASK in rates
        else None
    )
    annotation_ids = filtered.loc[filtered["variant"] == "annotation", "prompt_id"] if "variant" in filtered else []
    measure = measure_teacher(paths.layout.response_store_path, annotation_ids)
    prices = teacher.prices()
    teacher_cost = (
        teacher_line(
            measure,
            f"teacher ({teacher.description()})",
            prices.prompt_per_million,
            prices.completion_per_million,
            teacher.max_concurrency,
            teacher.requests_per_minute,
            priced=teacher.mode == "embedded" or bool(prices.prompt_per_million or prices.completion_per_million),
        )
        if measure is not None
        else None
    )
    return cost_section(teacher_cost, student_cost, teacher.requests_per_minute)


def _spend_metadata(spend: TeacherSpend, results, section) -> dict:
    """The spend totals as numbers (collection and this evaluation), and the report's section as Markdown."""
    total = spend.collection.total if spend.collection else None
    usage = results.api_usage.get(TEACHER)
    return {
        "teacher_spend_usd": total.usd if total else 0.0,
        "teacher_spend_requests": total.requests if total else 0,
        "teacher_spend_prompt_tokens": total.prompt_tokens if total else 0,
        "teacher_spend_completion_tokens": total.completion_tokens if total else 0,
        "teacher_spend_batch_usd": total.batch_usd if total else 0.0,
        "evaluation_teacher_usd": usage.usd if usage and usage.usd is not None else 0.0,
        "evaluation_teacher_requests": usage.requests if usage else 0,
        "teacher_spend": MetadataValue.md(section.markdown()),
    }


def _record_scores_in_model_cards(checkpoints, results) -> list[str]:
    """Each evaluated adapter's card gets this evaluation's scores as its model-index; returns the cards written."""
    written = []
    for checkpoint in checkpoints:
        readme = checkpoint.adapter_dir / "README.md"
        if readme.is_file():
            record_eval_results(readme, checkpoint.mask_mode, eval_results_for(results, checkpoint.variant))
            written.append(str(readme))
    return written


METRIC_RANGES = {"perplexity": (1.0, math.inf), "chrf": (0.0, 100.0), "kappa": (-1.0, 1.0)}


@asset(
    # Every mask mode's manifest; a mode not materialised yet is left out of the dict (and noted in the report).
    ins={"lora_checkpoint": AssetIn(metadata={"allow_missing_partitions": True})},
    group_name="evaluation",
    pool=GPU_POOL,  # shares the GPU with the fine-tunes: one at a time (instance.py)
    automation_condition=FOLLOWS_UPSTREAM_DATA,
    code_version=asset_code_version("eval_report"),
    kinds={"python", "parquet"},
    check_specs=[
        AssetCheckSpec(
            "every_variant_scored",
            asset="eval_report",
            blocking=True,
            description="The base student and every checkpoint found are scored on every evaluated task.",
        ),
        AssetCheckSpec(
            "metrics_in_range",
            asset="eval_report",
            blocking=True,
            description="Every score and interval bound is within its metric's range (rates in [0, 1], chrF in [0, 100], perplexity >= 1, kappa in [-1, 1]).",
        ),
    ],
)
def eval_report(
    context: AssetExecutionContext,
    config: EvalReportConfig,
    filtered_responses: pd.DataFrame,
    lora_checkpoint: dict[str, pd.DataFrame],
    paths: OpenGrokPaths,
    student: StudentResource,
    teacher: TeacherResource,
):
    """What distillation and each mask mode buy, task by task, with 95% bootstrap intervals and paired tests.

    Reads the LoRA checkpoints the ``lora_checkpoint`` manifests point at (modes not materialised are
    reported), and writes ``report.md``, ``report.html``, the plots and ``results.parquet`` to
    ``$OPENGROK_HOME/reports/``; the asset value is the numbers as a long table.
    """
    evaluation_config = config.domain_config()
    try:
        checkpoints, missing = find_checkpoints(adapter_dirs(lora_checkpoint or {}), MASK_MODES)
        local = LocalStudent(
            student.model_path(),
            checkpoints,
            threads=evaluation_config.torch_threads,
            device=evaluation_config.device,
            precision=evaluation_config.precision,
            batch_tokens=evaluation_config.batch_tokens,
        )
    except (ValueError, DeviceUnavailableError) as exc:  # a CheckpointError, a manifest without the contract columns
        raise Failure(f"eval_report: {exc}") from None
    notes = [f"mask mode {mode} not evaluated: {reason}" for mode, reason in missing.items()]
    api_models = ([_teacher_model(teacher)] if config.include_teacher else []) + [
        ApiModel.from_spec(e) for e in evaluation_config.endpoints
    ]
    heldout = filtered_responses[(filtered_responses["split"] == "heldout") & filtered_responses["response"].notna()]
    heldout = heldout[heldout["task"].isna()] if "task" in heldout.columns else heldout  # generated answers only
    try:
        answers = AnswerCache(paths.layout.eval_answers_path) if config.reuse_api_answers else None
        results = Evaluation(evaluation_config, local, api_models, context.log.info, answers).run(heldout, notes)
    except DatasetError as exc:
        raise Failure(f"eval_report: {exc}") from None
    choices = {task.name: {c.model: c.chosen for c in task.scoring_choices} for task in results.tasks}
    agreement, agreement_notes = posts_agreement(
        local, filtered_responses, evaluation_config, log=context.log.info, choices=choices
    )
    results.tasks.extend(agreement)  # beside the gold-label scores: the figure a user without gold labels has
    results.notes.extend(agreement_notes)
    spend = _teacher_spend(teacher, paths)
    report = build_report(results, spend=spend)
    costs = _cost_section(results, filtered_responses, teacher, paths, student)
    report.blocks.extend(costs.blocks)
    frame = results_frame(results)
    published = publish_report(paths.layout.reports_dir, report, frame)
    context.log.info(f"report written to {published['markdown']} and {published['html']} in {results.seconds:.0f}s")
    cards = _record_scores_in_model_cards(checkpoints, results)
    metadata = _metadata(results, report, frame, published, evaluation_config, local, cards)
    metadata["cost_per_million_posts"] = MetadataValue.md(costs.markdown())
    yield Output(frame, metadata=metadata | _spend_metadata(spend, results, spend_section(spend, results)))
    yield from _checks(results, frame, set(local.variants))


def _metadata(
    results, report, frame: pd.DataFrame, published: dict, evaluation_config: EvaluationConfig, local, cards
) -> dict:
    checkpoints = local.checkpoints
    metadata = {
        "dagster/row_count": len(frame),
        "summary": MetadataValue.md(
            summary_table(results).to_markdown(index=False) if results.tasks else "no task was evaluated"
        ),
        "report_markdown": MetadataValue.path(str(published["markdown"])),
        "report_html": MetadataValue.path(str(published["html"])),
        "sample_sizes": MetadataValue.json({t.name: t.n for t in results.tasks}),
        "seed": evaluation_config.seed,
        "resamples": evaluation_config.resamples,
        "seconds": round(results.seconds, 1),
        "device": f"{local.device} ({local.dtype})",
        "posts_per_second": MetadataValue.json(results.throughput.get("posts_per_second", {})),
        "checkpoints": MetadataValue.json(
            {c.mask_mode: {"dir": str(c.adapter_dir), "version": c.version} for c in checkpoints}
        ),
        "model_cards_updated": MetadataValue.json(cards),
        "notes": MetadataValue.md("\n".join(f"- {n}" for n in results.notes) or "none"),
    }
    if MAIN_PLOT in report.images:
        metadata["main_plot"] = png_markdown(report.images[MAIN_PLOT], "primary metric per task and model")
    return metadata


def _checks(results, frame: pd.DataFrame, expected: set[str]):
    unscored = {t.name: sorted(expected - {s.model for s in t.scores}) for t in results.tasks}
    unscored = {task: models for task, models in unscored.items() if models}
    yield AssetCheckResult(
        check_name="every_variant_scored", passed=not unscored, metadata={"unscored": MetadataValue.json(unscored)}
    )
    scores = frame[frame["section"] == "score"]
    out_of_range = []
    for row in scores.itertuples():
        low, high = METRIC_RANGES.get(row.metric, (0.0, 1.0))
        if any(not pd.isna(v) and not low - 1e-9 <= v <= high + 1e-9 for v in (row.value, row.ci_low, row.ci_high)):
            out_of_range.append(f"{row.task}/{row.model}/{row.metric}")
    yield AssetCheckResult(
        check_name="metrics_in_range",
        passed=not out_of_range,
        metadata={"out_of_range": ", ".join(out_of_range) or "none"},
    )
