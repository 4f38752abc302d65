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

from assets.config import config_from
from assets.versioning import asset_code_version, content_data_version
from opengrok_dagster.collect.annotation import (
    RESPONSE_FORMATS,
    annotation_count,
    build_annotation_prompts,
    posts_for_topic,
)
from opengrok_dagster.collect.batch import collect_batch
from opengrok_dagster.collect.budget import Budget, utc_day
from opengrok_dagster.collect.client import EndpointUnreachable, TeacherConfigurationError
from opengrok_dagster.collect.collector import CollectionSummary, collect_responses
from opengrok_dagster.collect.plan import CollectionEstimate, estimate_collection, round_prompt_grid
from opengrok_dagster.collect.prompts import PromptGridConfig
from opengrok_dagster.collect.result import OVERLONG, REFUSED_ANOMALIES
from opengrok_dagster.collect.store import STORED_COLUMNS
from opengrok_dagster.collect.topics import find_topic
from opengrok_dagster.partitions import collection_partitions
from opengrok_dagster.profiles import PROMPTS, with_profile_defaults
from opengrok_dagster.tasks.formats import TASK_FORMATS
from resources import OpenGrokPaths, TeacherResource


@with_profile_defaults(
    PROMPTS
)  # opengrok_dagster/config/profiles/: how much of the grid annotates posts, and for which tasks
class PromptsConfig(config_from(PromptGridConfig)):
    """The prompt grid's settings (from ``PromptGridConfig``), and whether the last round's feedback refines it."""

    refine_from_feedback: bool = Field(
        default=True,
        description="Weight, rewrite and extend the grid from the prompt_feedback of the latest earlier round, when there is one.",
    )
    annotation_share: float = Field(
        default=0.9,
        description="Share of all prompts that ask the teacher to annotate real posts (from `posts`) for an SNS task, "
        "as the evaluation asks; 0 = generative prompts only, 1 = annotation prompts only.",
    )
    annotation_tasks: list[str] = Field(
        default=["tweeteval_sentiment"],
        description=f"SNS tasks posts are annotated for, of {', '.join(TASK_FORMATS)} (opengrok_dagster/config/profiles/gpu.yaml: all).",
    )
    structured_output: str = Field(
        default="json_schema",
        description=f"Structured output asked of the teacher, one of {', '.join(RESPONSE_FORMATS)}; an endpoint that "
        "refuses it is asked with the next (the response records which answered).",
    )


def _count_table(frame: pd.DataFrame, column: str) -> MetadataValue:
    counts = frame[column].value_counts().sort_index()
    return MetadataValue.md(
        "\n".join([f"| {column} | prompts |", "|---|---:|", *(f"| {k} | {v} |" for k, v in counts.items())])
    )


@asset(
    partitions_def=collection_partitions,
    group_name="acquisition",
    code_version=asset_code_version("prompts"),
    kinds={"python", "parquet"},
    check_specs=[
        AssetCheckSpec("unique_prompt_ids", asset="prompts", blocking=True, description="No prompt_id appears twice."),
        AssetCheckSpec(
            "within_daily_budget",
            asset="prompts",
            blocking=True,
            description="The collection's expected cost fits what is left of today's teacher budget "
            "(OPENGROK_TEACHER_DAILY_BUDGET_USD); otherwise raw_responses does not start.",
        ),
    ],
    # Every shard of the user's posts feeds the annotation prompts; read from their Parquet files so that a
    # grid without annotation prompts needs no posts materialised.
    deps=[AssetDep("posts", partition_mapping=AllPartitionMapping())],
)
def prompts(context: AssetExecutionContext, config: PromptsConfig, paths: OpenGrokPaths, teacher: TeacherResource):
    """The prompt grid for one topic: templates x platforms x styles, plus adversarial variants, and (a share of
    annotation_share) prompts that ask the teacher to annotate real posts as the evaluation asks; with the
    estimate of what collecting it will send and cost (the `opengrok run --dry-run` figures)."""
    keys = context.partition_key.keys_by_dimension
    topic = find_topic(paths.topics(), keys["topic"])
    grid = config.domain_config()
    # Read by path, not as an asset input: feedback is downstream of prompts, so an input would be a cycle.
    feedback_file = paths.layout.prompt_feedback_path if config.refine_from_feedback else None
    try:
        rows, refinement = round_prompt_grid(topic, grid, keys["round"], feedback_file)
    except ValueError as exc:
        raise Failure(f"{exc}; or set refine_from_feedback: false") from None
    try:
        wanted = annotation_count(len(rows), config.annotation_share)
        rows = rows if config.annotation_share < 1 else []
        annotations = build_annotation_prompts(
            _posts_of(paths, topic.key, [t.key for t in paths.topics()]) if wanted else pd.DataFrame(),
            topic.key,
            wanted,
            tuple(config.annotation_tasks),
            config.structured_output,
            config.seed,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from None
    rows = rows + [{**row, "round": keys["round"]} for row in annotations]
    if not rows:
        raise Failure(
            f"the prompt grid for topic {topic.key!r} is empty: raise base_per_topic, style_per_topic or adversarial_per_topic"
        )
    frame = pd.DataFrame(rows)
    estimate = _estimate(teacher, paths, topic.key, keys["round"], rows)
    yield Output(
        frame,
        data_version=content_data_version(frame),
        metadata={
            "dagster/row_count": len(frame),
            "topic": topic.key,
            "round": keys["round"],
            **{
                f"by_{column}": _count_table(frame, column)
                for column in ("variant", "template_id", "platform", "style")
            },
            "annotation_prompts": len(annotations),
            "annotation_share": config.annotation_share,
            "structured_output": config.structured_output,
            "preview": MetadataValue.md(
                frame[["prompt_id", "variant", "template_id", "prompt"]].head(8).to_markdown(index=False)
            ),
            **_refinement_metadata(refinement),
            **estimate.as_metadata(),
        },
    )
    duplicates = int(frame["prompt_id"].duplicated().sum())
    yield AssetCheckResult(check_name="unique_prompt_ids", passed=duplicates == 0, metadata={"duplicates": duplicates})
    yield _daily_budget_check(teacher, paths, estimate)


def _refinement_metadata(refinement) -> dict:
    """Which round's filtered set refined this grid, and how (template weights, rewrites, extra adversarial)."""
    if not refinement:
        return {"refined_from_round": "none"}
    return {
        "refined_from_round": refinement.from_round,
        "refinement": MetadataValue.json(
            {
                "template_weights": dict(refinement.template_weights),
                "rewritten_templates": sorted(refinement.rewritten_templates),
                "extra_adversarial": refinement.extra_adversarial,
            }
        ),
    }


def _daily_budget_check(
    teacher: TeacherResource, paths: OpenGrokPaths, estimate: CollectionEstimate
) -> AssetCheckResult:
    limit = teacher.daily_budget_usd
    if limit is None:
        return AssetCheckResult(check_name="within_daily_budget", passed=True, metadata={"daily_budget_usd": "unset"})
    store = paths.response_store()
    try:
        remaining = max(0.0, limit - store.spend.spent(day=utc_day()))
    finally:
        store.close()
    passed = estimate.usd <= remaining
    return AssetCheckResult(
        check_name="within_daily_budget",
        passed=passed,
        metadata={
            "estimate_usd": estimate.usd,
            "estimate_usd_max": estimate.usd_max,
            "daily_budget_usd": limit,
            "remaining_today_usd": remaining,
        },
        description=None
        if passed
        else (
            f"the collection is expected to cost USD {estimate.usd:.6f} but only {remaining:.6f} of today's "
            f"OPENGROK_TEACHER_DAILY_BUDGET_USD={limit:g} is left: raise it, collect fewer prompts, or wait for the "
            "next UTC day"
        ),
    )


def _estimate(
    teacher: TeacherResource, paths: OpenGrokPaths, topic: str, round_key: str, rows: list[dict]
) -> CollectionEstimate:
    key = teacher.response_key(round_key)
    store = paths.response_store()
    try:
        answered = store.responses.answered(key, (row["prompt_id"] for row in rows))
        history = store.responses.completion_history(key.teacher_model, key.sampling_key)
    finally:
        store.close()
    count_tokens, tokenizer = teacher.token_counter()
    return estimate_collection(
        topic, rows, answered, count_tokens, teacher.max_tokens, teacher.prices(), tokenizer, history
    )


# `opengrok run` tags every run it starts with one id, so OPENGROK_TEACHER_BUDGET_USD covers the whole command.
BUDGET_RUN_TAG = "opengrok/budget_run"


def _budget(context: AssetExecutionContext, teacher: TeacherResource, store) -> Budget:
    partition = context.partition_key if isinstance(context.partition_key, str) else str(context.partition_key)
    return Budget(store, teacher.budget_limits(), context.run.tags.get(BUDGET_RUN_TAG, context.run.run_id), partition)


def _spend_metadata(budget: Budget) -> dict:
    """USD spent by this partition in this run, by the whole run, and today (UTC) across runs."""
    store, today = budget.store, utc_day()
    remaining = budget.remaining_today()
    return {
        "spend_usd_partition_this_run": store.spend.spent(run_id=budget.run_id, partition=budget.partition),
        "spend_usd_run": store.spend.spent(run_id=budget.run_id),
        "spend_usd_today": store.spend.spent(day=today),
        **({"daily_budget_remaining_usd": remaining} if remaining is not None else {}),
    }


def _posts_of(paths: OpenGrokPaths, topic: str, topics: list[str]) -> pd.DataFrame:
    """This topic's share of every materialised posts shard; an annotated grid without posts is an error."""
    files = sorted(paths.layout.asset_dir("posts").glob("*.parquet"))
    if not files:
        raise ValueError(
            "annotation_share > 0 but no posts shard is materialised; materialise posts "
            "(its partitions come from opengrok_dagster/config/posts.yaml), or set annotation_share: 0"
        )
    return posts_for_topic(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), topic, topics)


def _collect(
    context: AssetExecutionContext, rows: list[dict], teacher: TeacherResource, store, round_key: str, budget: Budget
) -> CollectionSummary:
    received = 0

    def on_result(row: dict, result) -> None:
        nonlocal received
        received += 1
        if received % 10 == 0 or received == len(rows):
            context.log.info(f"{received} teacher responses received this run")

    async def run() -> CollectionSummary:
        async with teacher.client(store, budget) as client:
            return await collect_responses(
                rows, client, store, round_key, on_result, teacher.leases(), run_id=context.run.run_id
            )

    try:
        if teacher.collection == "batch":
            if teacher.mode == "embedded":
                raise Failure(
                    "collection 'batch' needs an endpoint with the Batch API (/v1/files, /v1/batches); the "
                    "embedded `transformers serve` teacher has none: set OPENGROK_TEACHER_COLLECTION=online"
                )
            topic = context.partition_key.keys_by_dimension["topic"]
            try:
                spec = teacher.spec()
            except ValueError as exc:  # a batch_poll_s or batch_price_factor out of range
                raise Failure(str(exc)) from None
            return collect_batch(
                rows,
                spec,
                store,
                round_key,
                topic,
                budget if budget.limits.limited else None,
                context.log.info,
                run_id=context.run.run_id,
            )
        return asyncio.run(run())
    except EndpointUnreachable as exc:
        raise Failure(
            description=f"{exc} (OPENGROK_TEACHER_BASE_URL). Responses received so far are kept; the prompts not "
            "answered stay missing and the next run asks them."
        ) from None
    except TeacherConfigurationError as exc:
        raise Failure(description=f"teacher refused the request: {exc}. Responses received so far are kept.") from None


class RawResponsesConfig(Config):
    max_error_rate: float = Field(
        default=0.2,
        description="Highest share of prompts that may end in an error before the check blocks downstream assets.",
    )


@asset(
    partitions_def=collection_partitions,
    group_name="acquisition",
    code_version=asset_code_version("raw_responses"),
    kinds={"python", "parquet"},
    pool="teacher",  # bounds concurrent teacher-calling steps across runs (pools in docker/dagster.yaml)
    check_specs=[
        AssetCheckSpec(
            "error_rate",
            asset="raw_responses",
            blocking=True,
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
    # Long on purpose: one open response store from what is answered, through collection, to reading it all back
    # and accounting for spend; the metadata that follows is that account.
    round_key = context.partition_key.keys_by_dimension["round"]
    store = paths.response_store()
    key = teacher.response_key(round_key)
    rows = prompts.to_dict("records")
    answered = store.responses.answered(key, prompts["prompt_id"])
    budget = _budget(context, teacher, store)
    summary = CollectionSummary(len(rows), len(answered), 0, 0, 0)
    if len(answered) < len(rows):
        summary = _collect(context, rows, teacher, store, round_key, budget)
    stored = pd.DataFrame(store.responses.fetch(key, prompts["prompt_id"]), columns=STORED_COLUMNS)
    spend = _spend_metadata(budget)
    store.close()
    if summary.budget_stop:
        raise Failure(
            description=f"stopped on budget: {summary.budget_stop}. {summary.unsent} prompts were not sent; they stay "
            "missing and the next run collects them (raise the budget, or wait for the next UTC day). "
            f"Received responses are kept ({summary.succeeded + summary.failed} this run).",
            metadata={**spend, "unsent": summary.unsent, "requested": summary.requested},
        )
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
            **{name: value for name, value in asdict(summary).items() if value is not None},
            **spend,
            "errors": int(frame["error"].notna().sum()),
            "error_rate": error_rate,
            "refusals": int(frame["anomaly"].isin(REFUSED_ANOMALIES).sum()),
            "overlong_answers": int((frame["anomaly"] == OVERLONG).sum()),
            "teacher_model": key.teacher_model,
            "sampling": key.sampling_key,
            "prompt_tokens": int(frame["prompt_tokens"].fillna(0).sum()),
            "completion_tokens": int(frame["completion_tokens"].fillna(0).sum()),
            "cost_usd_estimate": float(frame["cost_usd"].sum()),
            "latency_p50_s": float(latency.quantile(0.5)),
            "latency_p95_s": float(latency.quantile(0.95)),
            "preview": MetadataValue.md(
                ok[["prompt_id", "template_id", "response"]]
                .head(5)
                .assign(response=lambda f: f["response"].str.slice(0, 160).str.replace("\n", " "))
                .to_markdown(index=False)
            ),
        },
    )
    yield AssetCheckResult(
        check_name="error_rate",
        passed=error_rate <= config.max_error_rate,
        severity=AssetCheckSeverity.ERROR,
        metadata={"error_rate": error_rate, "max_error_rate": config.max_error_rate},
        description=None
        if error_rate <= config.max_error_rate
        else "rerun the partition to retry failed prompts; answered ones are reused",
    )
