"""The contracts between stages: values and columns both sides of an artifact rely on, and reading an artifact
another stage stored, with errors that name the file and how to rebuild it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


# The `variant` of a prompt that asks the teacher to annotate one of the user's posts (prompts, raw_responses).
ANNOTATION_VARIANT = "annotation"


def read_stored(path: Path, what: str, columns: Sequence[str], fix: str) -> pd.DataFrame:
    """``what`` names the artifact in messages; ``fix`` says how to rebuild it."""
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}; {fix}") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} {path} lacks the columns {missing}; {fix}")
    return frame


# posts: the user's own posts, one row a post.
POST_COLUMNS = ("post_id", "text", "topic", "platform", "created_at", "shard", "source")


# Where an answer's prompt came from: carried from prompts through raw_responses into filtered_responses.
PROMPT_PROVENANCE_COLUMNS = (
    "prompt_id",
    "topic",
    "round",
    "template_id",
    "platform",
    "style",
    "variant",
)


# raw_responses: the columns the filter reads (the prompt's columns and the stored answer's).
RAW_COLUMNS = (
    *PROMPT_PROVENANCE_COLUMNS,
    "system_prompt",
    "prompt",
    "teacher_model",
    "sampling_key",
    "response",
    "finish_reason",
    "request_id",
    "error",
    "collected_at",
)


# ... and those a raw_responses partition written by older code may lack.
OPTIONAL_RAW_COLUMNS = ("anomaly",)


# filtered_responses: one row per raw response, in this order.
FILTERED_COLUMNS = (
    "example_id",
    *PROMPT_PROVENANCE_COLUMNS,
    "teacher_model",
    "request_id",
    "collected_at",
    "system_prompt",
    "prompt",
    "response",
    "content_hash",
    "state",
    "reasons",
    "scores",
    "split",
    "task",
    "class_label",
)


# What the mask builder reads of filtered_responses.
MASK_INPUT_COLUMNS = ("example_id", "split", "system_prompt", "prompt", "response")


# What the trainer reads of mask_tables.
TRAINING_INPUT_COLUMNS = ("example_id", "split", "input_ids", "response_start", "m", "p", "tokenizer_fingerprint")


# kd_targets: one row per mask-table row (the asset adds tokenizer_fingerprint).
KD_COLUMNS = (
    "example_id",
    "input_ids_digest",
    "kd_positions",
    "kd_token_ids",
    "kd_logprobs",
    "response_tokens",
    "aligned_tokens",
)


# What the trainer reads of kd_targets.
KD_INPUT_COLUMNS = (
    "example_id",
    "input_ids_digest",
    "kd_positions",
    "kd_token_ids",
    "kd_logprobs",
    "tokenizer_fingerprint",
)


# lora_checkpoint: the one-row manifest of a published adapter, which the evaluation reads.
MANIFEST_REQUIRED_COLUMNS = (
    "mask_mode",
    "adapter_dir",
    "base_model",
    "best_val_loss",
    "global_step",
    "early_stopped",
    "train_examples",
    "validation_examples",
    "tokens_per_second",
)
# What the adapter was trained with beyond its mode: the mask options (JSON: scope, selection, strength, ...) and
# the validation loss its checkpoint was chosen on; absent from manifests written before they were recorded.
MANIFEST_RECORDED_OPTIONS = ("mask_options", "checkpoint_selection")
MANIFEST_COLUMNS = MANIFEST_REQUIRED_COLUMNS + MANIFEST_RECORDED_OPTIONS
