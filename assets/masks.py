"""Mask tables: per-token attention masks (TF-IDF, POS, dependency, random) aligned to the student's tokens."""

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
from assets.metadata import png_markdown
from assets.versioning import asset_code_version, content_data_version
from opengrok_dagster.masks.builder import build_mask_table, select_training_examples
from opengrok_dagster.masks.checks import (
    examples_with_bad_lengths,
    masked_template_tokens,
    p_values_outside_unit_interval,
)
from opengrok_dagster.masks.config import MaskConfig, MaskInputError
from opengrok_dagster.masks.inspect import MaskSummary, p_histogram_png, render_markdown, summarise
from opengrok_dagster.masks.linguistics import SpacyModelError, load_spacy
from opengrok_dagster.masks.render import ChatTemplateError
from opengrok_dagster.masks.tokenizer import TokenizerOffsetsError, structural_special_ids
from opengrok_dagster.profiles import MASK_TABLES, with_profile_defaults
from resources import OpenGrokPaths, StudentResource


# Errors whose message already names the bad input and the fix: shown as the run's failure, without a traceback.
_INPUT_ERRORS = (MaskInputError, SpacyModelError, TokenizerOffsetsError, ChatTemplateError)


@with_profile_defaults(MASK_TABLES)  # opengrok_dagster/config/profiles/: the deployment's max_length
class MaskTablesConfig(config_from(MaskConfig)):
    """The mask stage's settings (from ``MaskConfig``) and the bounds of the blocking unmasked-rate check."""

    min_unmasked_rate: float = Field(
        default=0.3, description="Lowest acceptable share of attendable content tokens (blocking check)."
    )
    max_unmasked_rate: float = Field(
        default=0.95, description="Highest acceptable share of attendable content tokens (blocking check)."
    )


def _rate_table(frame: pd.DataFrame, column: str, limit: int = 20) -> MetadataValue:
    rows = [f"| {r[column]} | {r['tokens']} | {r['unmasked_rate']:.3f} |" for _, r in frame.head(limit).iterrows()]
    return MetadataValue.md("\n".join([f"| {column} | content tokens | unmasked rate |", "|---|---:|---:|", *rows]))


def _samples(table: pd.DataFrame) -> MetadataValue:
    one_per_split = pd.concat([table[table["split"] == split].head(1) for split in ("train", "validation")])
    chosen = one_per_split if len(one_per_split) == 2 else table.head(2)
    legend = "Masked tokens are ~~struck through~~; chat-template tokens are always attendable and not shown.\n\n"
    return MetadataValue.md(legend + "\n\n".join(render_markdown(row) for _, row in chosen.iterrows()))


def _metadata(table: pd.DataFrame, summary: MaskSummary, result, vocabulary_path, mask_config: MaskConfig) -> dict:
    return {
        "dagster/row_count": len(table),
        **{f"{split}_examples": int((table["split"] == split).sum()) for split in ("train", "validation")},
        "dropped_examples": len(result.dropped_example_ids),
        "dropped_example_ids": MetadataValue.json(result.dropped_example_ids[:50]),
        "tokens": summary.tokens,
        "content_tokens": summary.content_tokens,
        "unmasked_rate": summary.unmasked_rate,
        "unmasked_rate_all_tokens": summary.unmasked_rate_all_tokens,
        "unmasked_by_pos": _rate_table(summary.by_pos, "pos_tag"),
        "unmasked_by_dep": _rate_table(summary.by_dep, "dep_rel"),
        "p_histogram": png_markdown(p_histogram_png(table), "p over content tokens"),
        "samples": _samples(table),
        "misaligned_token_rate": result.misaligned_tokens / max(result.content_tokens, 1),
        "words": result.words,
        "build_seconds": round(result.seconds, 2),
        "tokenizer_fingerprint": str(table["tokenizer_fingerprint"].iloc[0]),
        "spacy_model": f"{mask_config.spacy_model} {table['spacy_model_version'].iloc[0]}",
        "max_length": mask_config.max_length,
        "tfidf_vocabulary": MetadataValue.path(str(vocabulary_path)),
        "tfidf_terms": len(result.tfidf.idf),
        "mask_config": MetadataValue.json(mask_config.model_dump()),
    }


@asset(
    group_name="masks",
    code_version=asset_code_version("mask_tables"),
    kinds={"python", "parquet", "spacy"},
    check_specs=[
        AssetCheckSpec(
            "lengths_match_tokens",
            asset="mask_tables",
            blocking=True,
            description="Every per-token list has one entry per input id, and no example exceeds max_length.",
        ),
        AssetCheckSpec(
            "p_in_unit_interval",
            asset="mask_tables",
            blocking=True,
            description="Every p is a finite number in [0, 1].",
        ),
        AssetCheckSpec(
            "template_tokens_unmasked",
            asset="mask_tables",
            blocking=True,
            description="Special and chat-template tokens always have m = 1.",
        ),
        AssetCheckSpec(
            "unmasked_rate_within_bounds",
            asset="mask_tables",
            blocking=True,
            description="The share of attendable content tokens lies in [min_unmasked_rate, max_unmasked_rate].",
        ),
    ],
)
def mask_tables(
    context: AssetExecutionContext,
    config: MaskTablesConfig,
    filtered_responses: pd.DataFrame,
    student: StudentResource,
    paths: OpenGrokPaths,
):
    """Per-token TF-IDF, POS, dependency and random scores, p and the binary mask m for every kept train and
    validation example, rendered with the student's chat template and cut to max_length as the trainer uses it."""
    from transformers import AutoTokenizer

    try:
        mask_config = config.domain_config()
        examples = select_training_examples(filtered_responses)
        tokenizer = AutoTokenizer.from_pretrained(student.model_path())
        nlp = load_spacy(mask_config.spacy_model)
        result = build_mask_table(examples, tokenizer, nlp, mask_config, progress=context.log.info)
    except _INPUT_ERRORS as exc:
        raise Failure(description=f"mask_tables: {exc}") from None
    table = result.table
    if result.dropped_example_ids:
        context.log.warning(
            f"{len(result.dropped_example_ids)} examples dropped: their prompt fills max_length={mask_config.max_length}"
        )
    vocabulary_path = result.tfidf.save(paths.layout.tfidf_vocabulary_dir)
    summary = summarise(table)
    yield Output(
        table,
        data_version=content_data_version(table),
        metadata=_metadata(table, summary, result, vocabulary_path, mask_config),
    )

    bad_lengths = examples_with_bad_lengths(table)
    yield AssetCheckResult(
        check_name="lengths_match_tokens",
        passed=not bad_lengths,
        metadata={"bad_examples": MetadataValue.json(bad_lengths[:20])},
    )
    outside = p_values_outside_unit_interval(table)
    yield AssetCheckResult(check_name="p_in_unit_interval", passed=outside == 0, metadata={"p_outside": outside})
    masked = masked_template_tokens(table, structural_special_ids(tokenizer))
    yield AssetCheckResult(
        check_name="template_tokens_unmasked", passed=masked == 0, metadata={"masked_template_tokens": masked}
    )
    within = config.min_unmasked_rate <= summary.unmasked_rate <= config.max_unmasked_rate
    yield AssetCheckResult(
        check_name="unmasked_rate_within_bounds",
        passed=within,
        metadata={
            "unmasked_rate": summary.unmasked_rate,
            "min": config.min_unmasked_rate,
            "max": config.max_unmasked_rate,
        },
        description=None
        if within
        else "adjust alpha..delta, random_mask_rate or the bounds: the mask hides too much or too little",
    )
