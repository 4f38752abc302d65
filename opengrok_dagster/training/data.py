"""From a ``mask_tables`` frame to training batches: labels on response tokens only, the per-token mask as a kwarg."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from opengrok_dagster.masks.tokenizer import require_same_tokenizer
from opengrok_dagster.tasks.schemas import TRAINING_INPUT_COLUMNS
from opengrok_dagster.training.attention import SEGMENT_IDS_KWARG, TOKEN_MASK_KWARG, require_mask_mode


IGNORE_INDEX = -100


class TrainingDataError(ValueError):
    """The mask table cannot be trained on; the message names the fix."""


@dataclass(frozen=True)
class MaskedExample:
    example_id: str
    input_ids: list[int]
    response_start: int
    m: list[float]
    p: list[float]

    @property
    def response_tokens(self) -> int:
        return len(self.input_ids) - self.response_start


@dataclass(frozen=True)
class TrainingData:
    train: list[MaskedExample]
    validation: list[MaskedExample]
    truncated: int
    dropped_without_response: int


def load_training_data(table: pd.DataFrame, tokenizer, max_length: int) -> TrainingData:
    """Check ``table`` against the mask-table contract and the student tokenizer, and cut it to ``max_length``.

    Examples whose response starts at or after ``max_length`` would carry no loss; they are dropped and counted.
    """
    missing = [column for column in TRAINING_INPUT_COLUMNS if column not in table.columns]
    if missing:
        raise TrainingDataError(
            f"mask_tables lacks columns {missing}; re-materialise mask_tables with the current code"
        )
    if table.empty:
        raise TrainingDataError(
            "mask_tables is empty: no kept train/validation examples; collect and filter more responses"
        )
    fingerprints = table["tokenizer_fingerprint"].unique()
    if len(fingerprints) != 1:
        raise TrainingDataError(f"mask_tables mixes tokenizers {list(fingerprints)}; re-materialise mask_tables")
    require_same_tokenizer(str(fingerprints[0]), tokenizer)

    splits: dict[str, list[MaskedExample]] = {"train": [], "validation": []}
    truncated = dropped = 0
    for row in table.itertuples(index=False):
        if row.split not in splits:
            raise TrainingDataError(
                f"mask_tables row {row.example_id!r} has split {row.split!r}; expected train or validation"
            )
        ids, m, p = list(row.input_ids), list(row.m), list(row.p)
        if not (len(ids) == len(m) == len(p)):
            raise TrainingDataError(
                f"mask_tables row {row.example_id!r} has {len(ids)} input_ids but {len(m)} m and {len(p)} p values; "
                "re-materialise mask_tables"
            )
        start = int(row.response_start)
        if start >= min(len(ids), max_length):
            dropped += 1
            continue
        truncated += len(ids) > max_length
        splits[row.split].append(
            MaskedExample(
                str(row.example_id),
                [int(i) for i in ids[:max_length]],
                start,
                [float(v) for v in m[:max_length]],
                [float(v) for v in p[:max_length]],
            )
        )
    for split, examples in splits.items():
        if not examples:
            raise TrainingDataError(
                f"mask_tables has no usable {split} examples ({dropped} dropped: response beyond max_length={max_length}); "
                "collect more responses, adjust the filter's split, or raise max_length"
            )
    return TrainingData(splits["train"], splits["validation"], truncated, dropped)


def balance_classes(table: pd.DataFrame, classes: pd.Series, seed: int, min_examples: int = 1) -> pd.DataFrame:
    """The mask table with its train rows oversampled so that every class has as many rows as the largest one.

    A small student trained on the natural label mix learns the prior (the majority answer for every post), not
    the conditional; equal class counts take that shortcut away. ``classes`` (aligned with ``table``'s index) is
    each example's label, null for examples without one (generative prompts), which are kept once. Validation rows
    are left as they are, so validation loss still measures the data as it comes. A class's rows are repeated
    whole (every row as often as any other, give or take one) in a seeded order. A class with fewer than
    ``min_examples`` train rows is kept as it is: repeated a hundredfold, a handful of posts would be learned by
    heart rather than their class.
    """
    classes = classes.reindex(table.index)
    labelled = (table["split"] == "train") & classes.notna()
    counts = classes[labelled].value_counts()
    if len(counts) < 2:
        return table
    rng = np.random.default_rng(seed)
    extra = []
    for label, count in counts[counts >= min_examples].items():
        rows = table.index[labelled & (classes == label)].to_numpy()
        missing = int(counts.max()) - int(count)
        repeats = np.concatenate([rng.permutation(rows) for _ in range(missing // len(rows) + 1)])[:missing]
        extra.append(table.loc[repeats])
    balanced = pd.concat([table, *extra], ignore_index=True)
    return balanced.iloc[rng.permutation(len(balanced))].reset_index(drop=True)


class MaskCollator:
    """Right-pads a batch; labels are the response tokens (prompt and padding -100).

    For the masked modes it adds ``token_mask`` (batch x sequence): ``m`` for paper/hard, ``p`` for soft,
    1 on padding (padding is already excluded by the attention mask).

    With ``pack_to`` the batch's examples are packed first-fit (longest first) into as few rows of at most
    ``pack_to`` tokens as they fit: ``position_ids`` restart at 0 for each example, ``segment_ids`` (1, 2, ...
    per example, 0 on padding) make the attention block-diagonal, and each example's first token carries no
    label (it would be predicted from the previous example). The loss sums the same response tokens as
    unpacked, so a batch's loss is the same.
    """

    def __init__(self, pad_token_id: int, mask_mode: str, pack_to: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.mask_mode = require_mask_mode(mask_mode)
        self.pack_to = pack_to

    def __call__(self, examples: list[MaskedExample]) -> dict[str, torch.Tensor]:
        rows = pack_rows(examples, self.pack_to) if self.pack_to else [[example] for example in examples]
        length = max(sum(len(example.input_ids) for example in row) for row in rows)
        shape = (len(rows), length)
        input_ids = np.full(shape, self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros(shape, dtype=np.int64)
        labels = np.full(shape, IGNORE_INDEX, dtype=np.int64)
        token_mask = np.ones(shape, dtype=np.float32)
        position_ids = np.zeros(shape, dtype=np.int64)
        segment_ids = np.zeros(shape, dtype=np.int64)
        for row, packed in enumerate(rows):
            offset = 0
            for segment, example in enumerate(packed, start=1):
                size = len(example.input_ids)
                span = slice(offset, offset + size)
                input_ids[row, span] = example.input_ids
                attention_mask[row, span] = 1
                response = example.input_ids[example.response_start :]
                labels[row, offset + example.response_start : offset + size] = response
                labels[row, offset] = IGNORE_INDEX
                token_mask[row, span] = example.p if self.mask_mode == "soft" else example.m
                position_ids[row, span] = np.arange(size)
                segment_ids[row, span] = segment
                offset += size
        out = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
        }
        if self.pack_to:
            out["position_ids"] = torch.from_numpy(position_ids)
            out[SEGMENT_IDS_KWARG] = torch.from_numpy(segment_ids)
        if self.mask_mode != "none":
            out[TOKEN_MASK_KWARG] = torch.from_numpy(token_mask)
        return out


def pack_rows(examples: list[MaskedExample], capacity: int) -> list[list[MaskedExample]]:
    """First-fit decreasing: each example goes into the first row it fits, longest examples first."""
    rows: list[list[MaskedExample]] = []
    free: list[int] = []
    for example in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        size = len(example.input_ids)
        row = next((index for index, room in enumerate(free) if room >= size), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(example)
        free[row] -= size
    return rows
