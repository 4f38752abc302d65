"""Deterministic train / validation / held-out split by prompt.

Held-out is decided by the prompt's own hash alone, so a prompt held out once is held out in every later
materialisation, whatever other prompts arrive: held-out prompts never enter training. Validation is then
drawn per topic (stratified) as an exact share of that topic's remaining prompts, in hash order.
"""

from __future__ import annotations

import hashlib
import math

import pandas as pd


TRAIN, VALIDATION, HELDOUT = "train", "validation", "heldout"


def prompt_unit(prompt_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from the prompt id: the same prompt always lands in the same place."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    prompts: pd.DataFrame, validation_fraction: float, heldout_fraction: float, seed: int
) -> dict[str, str]:
    """Split for each distinct prompt_id of ``prompts`` (columns prompt_id, topic)."""
    distinct = prompts[["prompt_id", "topic"]].drop_duplicates("prompt_id")
    splits: dict[str, str] = {}
    for _, group in distinct.groupby("topic", sort=True):
        units = sorted((prompt_unit(pid, seed), pid) for pid in group["prompt_id"])
        remaining = []
        for unit, pid in units:
            if unit < heldout_fraction:
                splits[pid] = HELDOUT
            else:
                remaining.append(pid)
        # At least one validation prompt once a topic has two trainable prompts, so every topic is validated.
        wanted = (
            math.ceil(validation_fraction * len(remaining)) if validation_fraction > 0 and len(remaining) >= 2 else 0
        )
        for position, pid in enumerate(remaining):
            splits[pid] = VALIDATION if position < wanted else TRAIN
    return splits
