"""The ``kd_targets`` table as the trainer uses it: checked against the student and the mask table, batched densely."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from opengrok_dagster.distill.align import input_ids_digest
from opengrok_dagster.distill.loss import KD_LOGPROBS, KD_TOKEN_IDS
from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint
from opengrok_dagster.tasks.schemas import KD_INPUT_COLUMNS


class KDTargetsError(ValueError):
    """The distillation targets do not belong to this student or this mask table; the message names the fix."""


@dataclass(frozen=True)
class ExampleTargets:
    positions: np.ndarray
    token_ids: list[np.ndarray]
    logprobs: list[np.ndarray]


@dataclass(frozen=True)
class KDTargets:
    """Sparse targets by example id, with the widest top-k (the dense batch's last dimension) and a content digest."""

    by_example: dict[str, ExampleTargets]
    top_k: int
    digest: str

    @classmethod
    def of(cls, table: pd.DataFrame | None, mask_table: pd.DataFrame, tokenizer) -> KDTargets:
        """Refuse targets made for another tokenizer or another version of ``mask_table``'s rows."""
        if table is None:
            raise KDTargetsError(
                "kd_alpha > 0 but no kd_targets were given; materialise kd_targets (from raw responses collected "
                "with logprobs) or set kd_alpha to 0"
            )
        missing = [column for column in KD_INPUT_COLUMNS if column not in table.columns]
        if missing:
            raise KDTargetsError(
                f"kd_targets lacks columns {missing}; re-materialise kd_targets with the current code"
            )
        student = tokenizer_fingerprint(tokenizer)
        made_for = sorted(set(table["tokenizer_fingerprint"].astype(str)) - {student})
        if made_for:
            raise KDTargetsError(
                f"kd_targets were built for tokenizer {made_for[0]}, but the student's tokenizer is {student}; "
                "re-materialise kd_targets (and mask_tables) with the same student model as the fine-tune"
            )
        digests = {str(i): input_ids_digest(ids) for i, ids in zip(mask_table["example_id"], mask_table["input_ids"])}
        by_example, top_k, content = {}, 1, hashlib.sha256()
        for row in table.itertuples(index=False):
            example_id = str(row.example_id)
            if example_id not in digests or not len(row.kd_positions):
                continue
            if digests[example_id] != row.input_ids_digest:
                raise KDTargetsError(
                    f"kd_targets row {example_id!r} was aligned to other tokens than mask_tables has for it; "
                    "re-materialise kd_targets after mask_tables"
                )
            targets = ExampleTargets(
                np.asarray(row.kd_positions, dtype=np.int64),
                [np.asarray(ids, dtype=np.int64) for ids in row.kd_token_ids],
                [np.asarray(lp, dtype=np.float32) for lp in row.kd_logprobs],
            )
            by_example[example_id] = targets
            top_k = max(top_k, *(len(ids) for ids in targets.token_ids))
            content.update(example_id.encode())
            for part in (targets.positions, *targets.token_ids, *targets.logprobs):
                content.update(part.tobytes())
        return cls(by_example, top_k, content.hexdigest()[:16])

    def collator(self, collate):
        return KDCollator(collate, self)


class KDCollator:
    """Wraps a batch collator: adds ``kd_token_ids`` (-1 padded) and ``kd_logprobs``, batch x sequence x top_k."""

    def __init__(self, collate, targets: KDTargets) -> None:
        self.collate = collate
        self.targets = targets

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        batch = self.collate(examples)
        rows, length = batch["input_ids"].shape
        token_ids = np.full((rows, length, self.targets.top_k), -1, dtype=np.int64)
        logprobs = np.zeros((rows, length, self.targets.top_k), dtype=np.float32)
        for row, example in enumerate(examples):
            targets = self.targets.by_example.get(example.example_id)
            if targets is None:
                continue
            for position, ids, values in zip(targets.positions, targets.token_ids, targets.logprobs):
                if position < len(example.input_ids):  # the trainer may cut rows shorter than the mask table did
                    token_ids[row, position, : len(ids)] = ids
                    logprobs[row, position, : len(ids)] = values
        batch[KD_TOKEN_IDS] = torch.from_numpy(token_ids)
        batch[KD_LOGPROBS] = torch.from_numpy(logprobs)
        return batch
