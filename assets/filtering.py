"""Filtering: the teacher's raw responses -> the filtered training set (with manual review), and the prompt
feedback that refines the next collection round."""

import json
from collections import Counter

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from assets.config import config_from
from assets.versioning import asset_code_version, content_data_version
from opengrok_dagster.collect.feedback import merge_history, read_feedback, score_prompts, yield_by_template
from opengrok_dagster.filtering.annotations import LABEL_ISSUE
from opengrok_dagster.filtering.chain import KEPT, REJECTED, STATES, FilterModels, filter_responses
from opengrok_dagster.filtering.config import FilterConfig
from opengrok_dagster.filtering.dedup import duplicate_reasons
from opengrok_dagster.filtering.pii import find_pii
from opengrok_dagster.filtering.raw import ROUND_SELECTIONS, available_rounds, choose_rounds, read_raw_responses
from opengrok_dagster.filtering.review import ReviewStore
from resources import OpenGrokPaths


class FilteredResponsesConfig(config_from(FilterConfig)):
    """The filter chain's settings (from ``FilterConfig``), which rounds it reads, and its blocking bound."""

    rounds: str = Field(default="latest", description=f"Which collection rounds to filter: one of {ROUND_SELECTIONS}.")
    last_n: int = Field(default=3, description="How many of the newest rounds `rounds: last_n` reads.")
    max_rejection_rate: float = Field(
        default=0.8, description="Highest share of rejected rows before the blocking check stops downstream assets."
    )


def _markdown_counts(frame: pd.DataFrame, by: str) -> MetadataValue:
    """Rows per state and per reason code, for each value of ``by`` (topic, template)."""
    states = pd.crosstab(frame[by], frame["state"]).reindex(columns=list(STATES), fill_value=0)
    exploded = frame[["reasons", by]].explode("reasons").dropna()
    reasons = pd.crosstab(exploded[by], exploded["reasons"]) if len(exploded) else pd.DataFrame(index=states.index)
    return MetadataValue.md(states.join(reasons, how="left").fillna(0).astype(int).to_markdown())


def _examples_per_reason(frame: pd.DataFrame, per_reason: int = 2) -> MetadataValue:
    exploded = frame[frame["reasons"].map(len) > 0].explode("reasons")
    examples = exploded.groupby("reasons", sort=True).head(per_reason)
    shown = examples.assign(
        response=examples["response"].str.slice(0, 120).str.replace("\n", " ").str.replace("|", "/")
    )
    return MetadataValue.md(
        shown[["reasons", "state", "topic", "template_id", "response"]]
        .rename(columns={"reasons": "reason"})
        .to_markdown(index=False)
    )


def _annotation_metadata(frame: pd.DataFrame) -> dict:
    """Per annotated task: rows, kept, rejected per reason, and the labels confident learning flagged."""
    annotations = frame[frame["task"].notna()]
    if annotations.empty:
        return {}
    table = {}
    for task, rows in annotations.groupby("task"):
        reasons = Counter(reason for row in rows["reasons"] for reason in row)
        table[task] = {
            "rows": len(rows),
            "kept": int((rows["state"] == KEPT).sum()),
            "label_issues": reasons.pop(LABEL_ISSUE, 0),
            "rejected_by_reason": dict(sorted(reasons.items())),
        }
    return {
        "annotation_rows": len(annotations),
        "label_issues": sum(t["label_issues"] for t in table.values()),
        "annotations_by_task": MetadataValue.json(table),
    }


@asset(
    deps=["raw_responses"],
    group_name="filtering",
    code_version=asset_code_version("filtered_responses"),
    kinds={"python", "parquet"},
    check_specs=[
        AssetCheckSpec(
            "every_row_has_one_state",
            asset="filtered_responses",
            blocking=True,
            description="kept + rejected + needs_review == input rows: nothing is dropped silently.",
        ),
        AssetCheckSpec(
            "training_set_not_empty",
            asset="filtered_responses",
            blocking=True,
            description="At least one kept row in the train split.",
        ),
        AssetCheckSpec(
            "rejection_rate_within_bound",
            asset="filtered_responses",
            blocking=True,
            description="The share of rejected rows is at most max_rejection_rate.",
        ),
        AssetCheckSpec(
            "no_pii_in_kept_text",
            asset="filtered_responses",
            blocking=True,
            description="No email, URL, handle or phone number left in a kept response.",
        ),
        AssetCheckSpec(
            "no_duplicates_in_kept_text",
            asset="filtered_responses",
            blocking=True,
            description="No exact or near duplicates among the kept responses.",
        ),
    ],
)
def filtered_responses(context: AssetExecutionContext, config: FilteredResponsesConfig, paths: OpenGrokPaths):
    """Every raw response of the chosen rounds, all topics, in exactly one state: kept (with its split),
    rejected (with reason codes and scores) or needs_review (the manual review queue).

    Reads the raw responses' Parquet files directly: loading this unpartitioned asset's partitioned parent
    through the IO manager would read every topic x round partition since the start date.
    """
    raw_dir = paths.layout.raw_responses_dir
    try:
        filter_config = config.domain_config()
        rounds = choose_rounds(available_rounds(raw_dir), config.rounds, config.last_n)
        raw = read_raw_responses(raw_dir, rounds)
        models = FilterModels.load(filter_config)
    except ValueError as exc:
        raise Failure(f"filtered_responses: {exc}") from None
    with ReviewStore(paths.layout.review_store_path) as reviews:
        decisions = reviews.latest_decisions()
    frame = filter_responses(raw, filter_config, models, decisions)
    context.log.info(f"filtered {len(frame)} responses from rounds {rounds}")

    counts = frame["state"].value_counts().reindex(list(STATES), fill_value=0)
    kept = frame[frame["state"] == KEPT]
    splits = kept["split"].value_counts()
    rejection_rate = counts[REJECTED] / len(frame) if len(frame) else 0.0
    yield Output(
        frame,
        data_version=content_data_version(frame),
        metadata=_metadata(frame, rounds, counts, splits, rejection_rate),
    )

    yield AssetCheckResult(
        check_name="every_row_has_one_state",
        passed=bool(int(counts.sum()) == len(raw) == len(frame)),
        metadata={"input_rows": len(raw), **{state: int(counts[state]) for state in STATES}},
    )
    train_rows = int(splits.get("train", 0))
    yield AssetCheckResult(
        check_name="training_set_not_empty",
        passed=train_rows > 0,
        metadata={"train_rows": train_rows},
        description=None
        if train_rows
        else "no kept training rows: inspect by_reason and loosen the thresholds or collect more",
    )
    yield AssetCheckResult(
        check_name="rejection_rate_within_bound",
        passed=bool(rejection_rate <= config.max_rejection_rate),
        metadata={"rejection_rate": float(rejection_rate), "max_rejection_rate": config.max_rejection_rate},
    )
    leaks = Counter(kind for text in kept["response"] for kind in find_pii(text))
    yield AssetCheckResult(
        check_name="no_pii_in_kept_text", passed=not leaks, metadata={"pii_found": json.dumps(dict(leaks))}
    )
    duplicated = _duplicates_in_kept(kept, filter_config)
    yield AssetCheckResult(
        check_name="no_duplicates_in_kept_text", passed=duplicated == 0, metadata={"duplicates": duplicated}
    )


def _metadata(frame: pd.DataFrame, rounds: list[str], counts, splits, rejection_rate: float) -> dict:
    """The filtered set's metadata: rows by state, split, reason, topic and template, with examples per reason."""
    reasons = Counter(reason for row in frame["reasons"] for reason in row)
    return {
        "dagster/row_count": len(frame),
        "rounds": ", ".join(rounds),
        **{f"{state}_rows": int(counts[state]) for state in STATES},
        **{f"{split}_rows": int(splits.get(split, 0)) for split in ("train", "validation", "heldout")},
        "rejection_rate": float(rejection_rate),
        "review_decisions_applied": int(
            frame["reasons"].map(lambda r: "review_accepted" in r or "review_rejected" in r).sum()
        ),
        "by_reason": MetadataValue.md(
            "\n".join(["| reason | rows |", "|---|---:|", *(f"| {k} | {v} |" for k, v in sorted(reasons.items()))])
        ),
        "by_topic": _markdown_counts(frame, "topic"),
        "by_template": _markdown_counts(frame, "template_id"),
        "examples_per_reason": _examples_per_reason(frame),
        **_annotation_metadata(frame),
    }


def _duplicates_in_kept(kept: pd.DataFrame, filter_config) -> int:
    """Kept rows that repeat another kept row (the no_duplicates_in_kept_text check)."""
    # Annotations repeat short answers across posts by design; one of them is a duplicate only for the same post.
    generated, annotations = kept[kept["task"].isna()], kept[kept["task"].notna()]
    duplicated = sum(
        1
        for reason in duplicate_reasons(
            generated["response"].tolist(),
            generated["content_hash"].tolist(),
            filter_config.near_duplicate_threshold,
            filter_config.minhash_permutations,
        )
        if reason
    )
    duplicated += int(annotations.duplicated(["task", "prompt"]).sum())
    return duplicated


@asset(group_name="filtering", code_version=asset_code_version("prompt_feedback"), kinds={"python", "parquet"})
def prompt_feedback(context: AssetExecutionContext, filtered_responses: pd.DataFrame, paths: OpenGrokPaths):
    """Keep rate, refusal rate, kept length and answer diversity per template, platform, style and variant,
    per round. The next round's `prompts` read it to weight, rewrite and extend the grid."""
    feedback_file = paths.layout.prompt_feedback_path
    try:
        previous = read_feedback(feedback_file)
    except ValueError as exc:
        raise Failure(f"prompt_feedback: {exc}") from None
    frame = merge_history(previous, score_prompts(filtered_responses))
    by_template = yield_by_template(frame)
    latest = frame[frame["round"] == frame["round"].max()]
    yield Output(
        frame,
        data_version=content_data_version(frame),
        metadata={
            "dagster/row_count": len(frame),
            "rounds": ", ".join(sorted(frame["round"].unique())),
            "yield_per_template_by_round": MetadataValue.md(by_template.to_markdown(floatfmt=".2f")),
            "latest_round": MetadataValue.md(latest.drop(columns="round").to_markdown(index=False, floatfmt=".2f")),
        },
    )
