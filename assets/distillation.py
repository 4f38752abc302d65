"""Token-level distillation targets: the teacher's top-k logprobs aligned to the mask tables' student tokens."""

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, Config, Failure, Output, asset
from pydantic import Field

from assets.versioning import asset_code_version, content_data_version
from opengrok_dagster.distill.align import (
    AlignmentInputError,
    StudentVocabularyError,
    TeacherLogprobsError,
    build_kd_targets,
)
from opengrok_dagster.distill.raw import read_teacher_logprobs
from opengrok_dagster.masks.render import ChatTemplateError
from opengrok_dagster.masks.tokenizer import TokenizerMismatchError, require_same_tokenizer
from resources import OpenGrokPaths, StudentResource


# Errors whose message already names the bad input and the fix: shown as the run's failure, without a traceback.
_INPUT_ERRORS = (
    AlignmentInputError,
    StudentVocabularyError,
    TeacherLogprobsError,
    ChatTemplateError,
    TokenizerMismatchError,
    ValueError,
)


class KDTargetsConfig(Config):
    min_aligned_share: float = Field(
        default=0.5,
        description="Lowest share of response tokens (of rows with logprobs) with a target before the blocking check "
        "fails: a lower one means the teacher's tokens do not spell the responses the student learns.",
    )


def _metadata(table: pd.DataFrame, result, fingerprint: str) -> dict:
    masses = [float(np.exp(lp).sum()) for row in table["kd_logprobs"] for lp in row]
    widths = [len(ids) for row in table["kd_token_ids"] for ids in row]
    return {
        "dagster/row_count": len(table),
        "rows_with_logprobs": result.rows_with_logprobs,
        "rows_without_logprobs": len(table) - result.rows_with_logprobs,
        "response_tokens": result.response_tokens,
        "aligned_tokens": result.aligned_tokens,
        "aligned_share": round(result.aligned_share, 4),
        "mean_targets_per_position": round(float(np.mean(widths)), 2) if widths else 0.0,
        "mean_teacher_mass_on_targets": round(float(np.mean(masses)), 4) if masses else 0.0,
        "tokenizer_fingerprint": fingerprint,
    }


@asset(
    deps=["raw_responses"],
    group_name="masks",
    code_version=asset_code_version("kd_targets"),
    kinds={"python", "parquet"},
    check_specs=[
        AssetCheckSpec(
            "aligned_share_at_least_minimum",
            asset="kd_targets",
            blocking=True,
            description="At least min_aligned_share of the response tokens of rows with logprobs have a target.",
        ),
    ],
)
def kd_targets(
    context: AssetExecutionContext,
    config: KDTargetsConfig,
    mask_tables: pd.DataFrame,
    filtered_responses: pd.DataFrame,
    student: StudentResource,
    paths: OpenGrokPaths,
):
    """Per mask-table row, the student positions whose byte span equals a teacher token's, each with the teacher's
    top-k alternatives that are single student tokens (ids and logprobs; the rest of the mass is "other").
    Rows whose response was collected without logprobs get no targets and train on cross-entropy alone."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(student.model_path())
        fingerprints = mask_tables["tokenizer_fingerprint"].unique()
        for fingerprint in fingerprints:
            require_same_tokenizer(str(fingerprint), tokenizer)
        trained = filtered_responses[filtered_responses["example_id"].isin(mask_tables["example_id"])]
        logprobs = read_teacher_logprobs(paths.layout.raw_responses_dir, trained["round"].astype(str))
        responses = trained.loc[:, ["example_id", "system_prompt", "prompt", "response"]].merge(
            logprobs, on="example_id", how="left"
        )
        result = build_kd_targets(mask_tables, responses, tokenizer)
    except _INPUT_ERRORS as exc:
        raise Failure(description=f"kd_targets: {exc}") from None
    table = result.table
    if not result.rows_with_logprobs:
        context.log.warning(
            "no raw response carries logprobs: kd_targets is empty and kd_alpha > 0 adds nothing; collect with "
            "logprobs enabled on the teacher to distil token distributions"
        )
    fingerprint = str(table["tokenizer_fingerprint"].iloc[0]) if len(table) else ""
    yield Output(table, data_version=content_data_version(table), metadata=_metadata(table, result, fingerprint))

    passed = not result.rows_with_logprobs or result.aligned_share >= config.min_aligned_share
    yield AssetCheckResult(
        check_name="aligned_share_at_least_minimum",
        passed=bool(passed),
        metadata={"aligned_share": round(result.aligned_share, 4), "min_aligned_share": config.min_aligned_share},
        description=None
        if passed
        else (
            "few student tokens line up with the teacher's: check that the logprobs belong to these responses "
            "(same collection round) and that the filter did not rewrite them, or lower min_aligned_share"
        ),
    )
