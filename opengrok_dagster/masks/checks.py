"""Invariants every mask table must hold before the trainer may use it (the asset's blocking checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from opengrok_dagster.masks.builder import TOKEN_LIST_COLUMNS


def examples_with_bad_lengths(table: pd.DataFrame) -> list[str]:
    """Examples whose per-token lists differ in length from input_ids, or exceed max_length."""
    bad = []
    for row in table.itertuples():
        n = len(row.input_ids)
        if n > row.max_length or any(len(getattr(row, column)) != n for column in TOKEN_LIST_COLUMNS):
            bad.append(row.example_id)
    return bad


def p_values_outside_unit_interval(table: pd.DataFrame) -> int:
    values = np.concatenate([np.asarray(p, dtype=np.float64) for p in table["p"]])
    return int((~np.isfinite(values) | (values < 0.0) | (values > 1.0)).sum())


def masked_template_tokens(table: pd.DataFrame, special_ids: set[int]) -> int:
    """Template or special tokens with m = 0 (they must always stay attendable)."""
    special = np.asarray(sorted(special_ids), dtype=np.int64)
    count = 0
    for ids, m, template in zip(table["input_ids"], table["m"], table["template_token"]):
        always = (np.asarray(template) == 1) | np.isin(np.asarray(ids), special)
        count += int((np.asarray(m)[always] == 0).sum())
    return count
