"""Data acquisition: the prompt grid and the teacher's raw responses, per topic and collection round."""


import asyncio
from dataclasses import asdict

import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    Config,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from opengrok_dagster.collect.annotation import (
    RESPONSE_FORMATS,
    annotation_count,
    build_annotation_prompts,
    posts_for_topic,
)
from opengrok_dagster.collect.client import TeacherConfigurationError
from opengrok_dagster.collect.collector import CollectionSummary, collect_responses
from opengrok_dagster.collect.store import STORED_COLUMNS
from opengrok_dagster.collect.prompts import ADVERSARIAL_TEMPLATES, BASE_TEMPLATES, PLATFORMS, STYLES, PromptGridConfig, build_prompt_grid
from opengrok_dagster.collect.topics import find_topic
from opengrok_dagster.filtering.feedback import read_feedback, refinement_for_round
from opengrok_dagster.partitions import collection_partitions
from opengrok_dagster.sns_tasks import TASK_FORMATS
from assets.versioning import content_data_version
from resources import OpenGrokPaths, TeacherResource


class PromptsConfig(Config):
    base_per_topic: int = Field(default=6, description="Plain template prompts per topic and round.")
    style_per_topic: int = Field(default=4, description="Style-manipulated prompts (tone, perspective, register, slang, emoji).")
    adversarial_per_topic: int = Field(default=2, description="Prompt-hacking prompts (conflicting claims, false premises, ...).")
    seed: int = Field(default=0, description="Seed of the grid sampler: the same seed gives the same prompts.")
    templates: list[str] = Field(default=[t.template_id for t in BASE_TEMPLATES], description="Base template ids to draw from.")
    adversarial_templates: list[str] = Field(default=[t.template_id for t in ADVERSARIAL_TEMPLATES], description="Adversarial template ids.")
    platforms: list[str] = Field(default=list(PLATFORMS), description="Platforms the prompts name.")
    styles: list[str] = Field(default=[s.style_id for s in STYLES], description="Style ids for style-manipulated prompts.")
    refine_from_feedback: bool = Field(
        default=True,
        description="Weight, rewrite and extend the grid from the prompt_feedback of the latest earlier round, when there is one.",
    )
    annotation_share: float = Field(
        default=0.0,
        description="Share of all prompts that ask the teacher to annotate real posts (from `posts`) for an SNS task, "
        "as the evaluation asks; 0 = generative prompts only, 1 = annotation prompts only.",
    )
    annotation_tasks: list[str] = Field(default=list(TASK_FORMATS), description="SNS tasks posts are annotated for.")
    structured_output: str = Field(
        default="json_schema",
        description=f"Structured output asked of the teacher, one of {', '.join(RESPONSE_FORMATS)}; an endpoint that "
        "refuses it is asked with the next (the response records which answered).",
    )


def _count_table(frame: pd.DataFrame, column: str) -> MetadataValue:
    counts = frame[column].value_counts().sort_index()
    return MetadataValue.md("\n".join([f"| {column} | prompts |", "|---|---:|", *(f"| {k} | {v} |" for k, v in counts.items())]))


@asset(
    partitions_def=collection_partitions,
    group_name="acquisition",
    code_version="1",
    kinds={"python", "parquet"},
    check_specs=[AssetCheckSpec("unique_prompt_ids", asset="prompts", blocking=True, description="No prompt_id appears twice.")],
    # Every shard of the user's posts feeds the annotation prompts; read from their Parquet files so that a
    # grid without annotation prompts needs no posts materialised.
    deps=[AssetDep("posts", partition_mapping=AllPartitionMapping())],
)
def prompts(context: AssetExecutionContext, config: PromptsConfig, paths: OpenGrokPaths):
    """The prompt grid for one topic: templates x platforms x styles, plus adversarial variants, and (a share of
    annotation_share) prompts that ask the teacher to annotate real posts as the evaluation asks."""
    keys = context.partition_key.keys_by_dimension
    topic = find_topic(paths.topics(), keys["topic"])
    annotation_fields = {"annotation_share", "annotation_tasks", "structured_output"}
    grid = PromptGridConfig(**{
        k: tuple(v) if isinstance(v, list) else v
        for k, v in config.model_dump(exclude={"refine_from_feedback", *annotation_fields}).items()
    })
    # Read by path, not as an asset input: feedback is downstream of prompts, so an input would be a cycle.
    feedback_file = paths.home_dir / "assets" / "prompt_feedback.parquet"
    try:
        refinement = refinement_for_round(read_feedback(feedback_file), keys["round"]) if config.refine_from_feedback else None
    except ValueError as exc:
        raise Failure(f"{exc}; or set refine_from_feedback: false") from None
    rows = build_prompt_grid(topic, grid, refinement)
    try:
        wanted = annotation_count(len(rows), config.annotation_share)
        rows = rows if config.annotation_share < 1 else []
        annotations = build_annotation_prompts(
            _posts_of(paths, topic.key, [t.key for t in paths.topics()]) if wanted else pd.DataFrame(),
            topic.key, wanted, tuple(config.annotation_tasks), config.structured_output, config.seed,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from None
    frame = pd.DataFrame(rows + annotations)
    if frame.empty:
        raise Failure(f"the prompt grid for topic {topic.key!r} is empty: raise base_per_topic, style_per_topic or adversarial_per_topic")
    frame["round"] = keys["round"]
    yield Output(
        frame,
        data_version=content_data_version(frame),
        metadata={
            "dagster/row_count": len(frame),
            "topic": topic.key,
            "round": keys["round"],
            **{f"by_{column}": _count_table(frame, column) for column in ("variant", "template_id", "platform", "style")},
            "annotation_prompts": len(annotations),
            "annotation_share": config.annotation_share,
            "structured_output": config.structured_output,
            "preview": MetadataValue.md(frame[["prompt_id", "variant", "template_id", "prompt"]].head(8).to_markdown(index=False)),
            "refined_from_round": refinement.from_round if refinement else "none",
            **({"refinement": MetadataValue.json({
                "template_weights": dict(refinement.template_weights),
                "rewritten_templates": sorted(refinement.rewritten_templates),
                "extra_adversarial": refinement.extra_adversarial,
            })} if refinement else {}),
        },
    )
    duplicates = int(frame["prompt_id"].duplicated().sum())
    yield AssetCheckResult(check_name="unique_prompt_ids", passed=duplicates == 0, metadata={"duplicates": duplicates})


def _posts_of(paths: OpenGrokPaths, topic: str, topics: list[str]) -> pd.DataFrame:
    """This topic's share of every materialised posts shard; an annotated grid without posts is an error."""
    files = sorted((paths.home_dir / "assets" / "posts").glob("*.parquet"))
    if not files:
        raise ValueError("annotation_share > 0 but no posts shard is materialised; materialise posts "
                         "(its partitions come from config/posts.yaml), or set annotation_share: 0")
    return posts_for_topic(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), topic, topics)


def _collect(context: AssetExecutionContext, rows: list[dict], teacher: TeacherResource, store, round_key: str) -> CollectionSummary:
    received = 0

    def on_result(row: dict, result) -> None:
        nonlocal received
        received += 1
        if received % 10 == 0 or received == len(rows):
            context.log.info(f"{received} teacher responses received this run")

    async def run() -> CollectionSummary:
        async with teacher.client() as client:
            return await collect_responses(rows, client, store, round_key, on_result)

    try:
        return asyncio.run(run())
    except TeacherConfigurationError as exc:
        raise Failure(description=f"teacher refused the request: {exc}. Responses received so far are kept.") from None


class RawResponsesConfig(Config):
    max_error_rate: float = Field(default=0.2, description="Highest share of prompts that may end in an error before the check blocks downstream assets.")


@asset(
    partitions_def=collection_partitions,
    group_name="acquisition",
    code_version="1",
    kinds={"python", "parquet"},
    pool="teacher",  # bounds concurrent teacher-calling steps across runs (pools in docker/dagster.yaml)
    check_specs=[
        AssetCheckSpec(
            "error_rate", asset="raw_responses", blocking=True,
            description="At most max_error_rate of the prompts end in an error; more stops bad data flowing on.",
        )
    ],
)
def raw_responses(
    context: AssetExecutionContext,
    config: RawResponsesConfig,
    prompts: pd.DataFrame,
    teacher: TeacherResource,
    paths: OpenGrokPaths,
):
    """The teacher's response (or final error) to every prompt of one topic and round.

    Each response is committed to the durable response store as it arrives; a rerun of the same round
    sends only the prompts without a stored response, so nothing is paid for twice.
    """
    round_key = context.partition_key.keys_by_dimension["round"]
    store = paths.response_store()
    key = teacher.response_key(round_key)
    rows = prompts.to_dict("records")
    answered = store.answered_prompt_ids(key, prompts["prompt_id"])
    summary = CollectionSummary(len(rows), len(answered), 0, 0, 0)
    if len(answered) < len(rows):
        summary = _collect(context, rows, teacher, store, round_key)
    stored = pd.DataFrame(store.fetch(key, prompts["prompt_id"]), columns=STORED_COLUMNS)
    store.close()
    frame = prompts.merge(stored.rename(columns={"text": "response"}), on=["prompt_id", "topic", "round"], how="left")
    missing = frame["collected_at"].isna().sum()
    if missing:
        raise Failure(f"{missing} prompts have no stored response or error after collection; rerun to request them")
    ok = frame[frame["error"].isna()]
    latency = ok["latency_s"] if len(ok) else pd.Series([0.0])
    error_rate = float(frame["error"].notna().mean())
    yield Output(
        frame,
        data_version=content_data_version(frame),
        metadata={
            "dagster/row_count": len(frame),
            **asdict(summary),
            "errors": int(frame["error"].notna().sum()),
            "error_rate": error_rate,
            "teacher_model": key.teacher_model,
            "sampling": key.sampling_key,
            "prompt_tokens": int(frame["prompt_tokens"].fillna(0).sum()),
            "completion_tokens": int(frame["completion_tokens"].fillna(0).sum()),
            "cost_usd_estimate": float(frame["cost_usd"].sum()),
            "latency_p50_s": float(latency.quantile(0.5)),
            "latency_p95_s": float(latency.quantile(0.95)),
            "preview": MetadataValue.md(
                ok[["prompt_id", "template_id", "response"]].head(5).assign(response=lambda f: f["response"].str.slice(0, 160).str.replace("\n", " ")).to_markdown(index=False)
            ),
        },
    )
    yield AssetCheckResult(
        check_name="error_rate",
        passed=error_rate <= config.max_error_rate,
        severity=AssetCheckSeverity.ERROR,
        metadata={"error_rate": error_rate, "max_error_rate": config.max_error_rate},
        description=None if error_rate <= config.max_error_rate else "rerun the partition to retry failed prompts; answered ones are reused",
    )
