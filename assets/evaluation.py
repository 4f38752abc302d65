"""Evaluation: the student (base and each LoRA mask mode), the teacher, extra endpoints and cheap baselines,
on SNS tasks and on agreement with the teacher's held-out responses, published as a report."""

import math
from typing import Optional

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from assets.metadata import png_markdown
from opengrok_dagster.automation import FOLLOWS_UPSTREAM_DATA
from opengrok_dagster.collect.client import ClientLimits
from opengrok_dagster.evaluation.answers import AnswerCache
from opengrok_dagster.evaluation.api import ApiModel, EndpointSpec
from opengrok_dagster.evaluation.datasets import DatasetError
from opengrok_dagster.evaluation.local import CheckpointError, LocalStudent, find_checkpoints
from opengrok_dagster.evaluation.report import MAIN_PLOT, build_report, publish_report, results_frame, summary_table
from opengrok_dagster.evaluation.runner import TEACHER, Evaluation, EvaluationConfig
from opengrok_dagster.evaluation.tasks import DEFAULT_TASKS, TASKS
from opengrok_dagster.offline.model import MODEL_NAME
from opengrok_dagster.partitions import MASK_MODES
from resources import OpenGrokPaths, StudentResource, TeacherResource


_DEFAULTS = EvaluationConfig()


class EvaluationEndpoint(Config):
    name: str = Field(description="Name the report uses for this model, e.g. 'gpt-4o' or 'phi-3-vllm'.")
    base_url: str = Field(description="OpenAI-compatible base URL ending in /v1.")
    model: str = Field(description="Model id sent to the endpoint.")
    api_key_env: Optional[str] = Field(default=None, description="Name of the environment variable holding its API key (never the key).")


class EvalReportConfig(Config):
    tasks: list[str] = Field(default=list(DEFAULT_TASKS), description=f"SNS tasks to evaluate; known: {', '.join(TASKS)}.")
    data_dir: Optional[str] = Field(default=None, description="Data directory laid out like shared/data; unset = $OPENGROK_DATA_DIR, else ../shared/data beside the repository.")
    eval_paths: dict[str, str] = Field(default={}, description="Per task, the split to evaluate, relative to data_dir (e.g. wnut17: wnut17/emerging.test.annotated).")
    train_paths: dict[str, list[str]] = Field(default={}, description="Per task, the train file(s) of the TF-IDF baselines, relative to data_dir.")
    classification_examples: int = Field(default=_DEFAULTS.classification_examples, description="Items sampled per classification/topic task (0 = the whole split).")
    task_examples: dict[str, int] = Field(
        default=_DEFAULTS.task_examples,
        description="Per task, items sampled instead of classification_examples/ner_examples (0 = the whole split); "
        "TweetEval sentiment's 500 keep the paired difference's 95% interval within +-0.06 (docs/efficacy.md).",
    )
    ner_examples: int = Field(default=6, description="Sentences sampled per NER task (0 = the whole split).")
    agreement_examples: int = Field(default=6, description="Held-out teacher responses sampled for teacher agreement (0 = all).")
    seed: int = Field(default=0, description="Seed of the item sampling and the bootstrap.")
    resamples: int = Field(default=1000, description="Bootstrap resamples per interval.")
    confidence: float = Field(default=0.95, description="Confidence level of the intervals.")
    topic_threshold: float = Field(default=0.3, description="Normalised label probability above which a topic is predicted (besides the top one).")
    ner_max_new_tokens: int = Field(default=40, description="Tokens generated per NER answer.")
    agreement_max_new_tokens: int = Field(default=48, description="Tokens the student generates per held-out prompt.")
    api_max_tokens: int = Field(default=32, description="Completion tokens per classification answer from an API model.")
    baseline_train_examples: int = Field(default=4000, description="Train items for the TF-IDF + LR baseline on gold labels (0 = all).")
    teacher_label_examples: int = Field(default=16, description="Train texts the teacher labels for the TF-IDF + LR baseline on teacher labels.")
    torch_threads: int = Field(default=0, description="CPU threads for the local models (0 = torch's default; 1 is faster on a machine busy with other jobs).")
    calibrate: bool = Field(default=_DEFAULTS.calibrate, description="Calibrate local models' label scores against content-free prompts ('N/A', '', '[MASK]') so a label prior does not decide.")
    example_posts: int = Field(default=_DEFAULTS.example_posts, description="Example posts per classification task shown in the report with each model's answer.")
    include_teacher: bool = Field(default=True, description="Evaluate the teacher resource (the embedded teacher starts a local server).")
    reuse_api_answers: bool = Field(
        default=True,
        description="Reuse the answers API models gave to the same prompts in earlier runs ($OPENGROK_HOME/eval_answers.sqlite; "
        "greedy decoding, so the same model answers the same): an unchanged rerun sends no requests. Set false to ask "
        "again, e.g. when a remote model changed behind the same id.",
    )
    endpoints: list[EvaluationEndpoint] = Field(default=[], description="Extra OpenAI-compatible models to compare; a failing one is reported, not fatal.")

    def evaluation_config(self) -> EvaluationConfig:
        values = self.model_dump(exclude={"include_teacher", "reuse_api_answers", "endpoints"})
        return EvaluationConfig(
            **(values | {"tasks": tuple(values["tasks"]), "train_paths": {k: tuple(v) for k, v in values["train_paths"].items()}}),
            endpoints=tuple(EndpointSpec(**e.model_dump()) for e in self.endpoints),
        )


def _teacher_model(teacher: TeacherResource) -> ApiModel:
    limits = ClientLimits(
        max_concurrency=teacher.max_concurrency, requests_per_minute=teacher.requests_per_minute,
        tokens_per_minute=teacher.tokens_per_minute, timeout_s=teacher.timeout_s, max_attempts=teacher.max_attempts,
    )
    where = f"embedded offline teacher ({MODEL_NAME})" if teacher.mode == "embedded" else f"{teacher.model} at {teacher.base_url}"
    return ApiModel(TEACHER, teacher.endpoint, where, limits)


METRIC_RANGES = {"perplexity": (1.0, math.inf), "chrf": (0.0, 100.0)}


@asset(
    deps=["lora_checkpoint"],
    group_name="evaluation",
    automation_condition=FOLLOWS_UPSTREAM_DATA,
    code_version="1",
    kinds={"python", "parquet"},
    check_specs=[
        AssetCheckSpec("every_variant_scored", asset="eval_report", blocking=True,
                       description="The base student and every checkpoint found are scored on every evaluated task."),
        AssetCheckSpec("metrics_in_range", asset="eval_report", blocking=True,
                       description="Every score and interval bound is within its metric's range (rates in [0, 1], chrF in [0, 100], perplexity >= 1)."),
    ],
)
def eval_report(
    context: AssetExecutionContext,
    config: EvalReportConfig,
    filtered_responses: pd.DataFrame,
    paths: OpenGrokPaths,
    student: StudentResource,
    teacher: TeacherResource,
):
    """What distillation and each mask mode buy, task by task, with 95% bootstrap intervals and paired tests.

    Reads the LoRA checkpoints that exist under ``$OPENGROK_HOME/checkpoints/<mode>/`` (missing modes are
    reported), and writes ``report.md``, ``report.html``, the plots and ``results.parquet`` to
    ``$OPENGROK_HOME/reports/``; the asset value is the numbers as a long table.
    """
    try:
        evaluation_config = config.evaluation_config()
    except (ValueError, DatasetError) as exc:
        raise Failure(f"eval_report config: {exc}") from None
    try:
        checkpoints, missing = find_checkpoints(paths.home_dir / "checkpoints", MASK_MODES)
        local = LocalStudent(student.model_path(), checkpoints, threads=evaluation_config.torch_threads)
    except CheckpointError as exc:
        raise Failure(f"eval_report: {exc}") from None
    notes = [f"mask mode {mode} not evaluated: {reason}" for mode, reason in missing.items()]
    api_models = ([_teacher_model(teacher)] if config.include_teacher else []) + [ApiModel.from_spec(e) for e in evaluation_config.endpoints]
    heldout = filtered_responses[(filtered_responses["split"] == "heldout") & filtered_responses["response"].notna()]
    try:
        answers = AnswerCache(paths.home_dir / "eval_answers.sqlite") if config.reuse_api_answers else None
        results = Evaluation(evaluation_config, local, api_models, context.log.info, answers).run(heldout, notes)
    except DatasetError as exc:
        raise Failure(f"eval_report: {exc}") from None
    report = build_report(results)
    frame = results_frame(results)
    published = publish_report(paths.home_dir / "reports", report, frame)
    context.log.info(f"report written to {published['markdown']} and {published['html']} in {results.seconds:.0f}s")
    metadata = {
        "dagster/row_count": len(frame),
        "summary": MetadataValue.md(summary_table(results).to_markdown(index=False) if results.tasks else "no task was evaluated"),
        "report_markdown": MetadataValue.path(str(published["markdown"])),
        "report_html": MetadataValue.path(str(published["html"])),
        "sample_sizes": MetadataValue.json({t.name: t.n for t in results.tasks}),
        "seed": evaluation_config.seed,
        "resamples": evaluation_config.resamples,
        "seconds": round(results.seconds, 1),
        "checkpoints": MetadataValue.json({c.mask_mode: {"dir": str(c.adapter_dir), "version": c.version} for c in checkpoints}),
        "notes": MetadataValue.md("\n".join(f"- {n}" for n in results.notes) or "none"),
    }
    if MAIN_PLOT in report.images:
        metadata["main_plot"] = png_markdown(report.images[MAIN_PLOT], "primary metric per task and model")
    yield Output(frame, metadata=metadata)

    expected = set(local.variants)
    unscored = {t.name: sorted(expected - {s.model for s in t.scores}) for t in results.tasks}
    unscored = {task: models for task, models in unscored.items() if models}
    yield AssetCheckResult(check_name="every_variant_scored", passed=not unscored, metadata={"unscored": MetadataValue.json(unscored)})
    scores = frame[frame["section"] == "score"]
    out_of_range = []
    for row in scores.itertuples():
        low, high = METRIC_RANGES.get(row.metric, (0.0, 1.0))
        if any(not pd.isna(v) and not low - 1e-9 <= v <= high + 1e-9 for v in (row.value, row.ci_low, row.ci_high)):
            out_of_range.append(f"{row.task}/{row.model}/{row.metric}")
    yield AssetCheckResult(check_name="metrics_in_range", passed=not out_of_range, metadata={"out_of_range": ", ".join(out_of_range) or "none"})
