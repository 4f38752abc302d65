"""What a run of the efficacy experiment varies: the task, the grid of teachers, N, seeds, mask modes, mask
strengths and KD weights (``Grid``, with the ``GRIDS`` presets), the mask variants and the training recipe."""

from __future__ import annotations

from dataclasses import dataclass

from opengrok_dagster.masks.config import MaskConfig
from opengrok_dagster.partitions import MASK_MODES
from opengrok_dagster.training.config import TrainingConfig


TASK = "tweeteval_sentiment"  # the default task; ``--task btc`` measures NER (experiments.efficacy_tasks)
# Mask variants (``--strengths``): today's default tables, a lighter mask (less random masking, higher keep
# probability), and for each scope (the post only, the whole prompt; the answer never masked) exactly 5, 10, 20 or
# 40% of the scope's tokens masked, lowest p first, with the random control at the same share ("random-...").
STRENGTHS = {
    "default": MaskConfig(),
    "light": MaskConfig(delta=0.0, random_mask_rate=0.05),
    **{
        f"{prefix}{scope}-{percent}": MaskConfig(scope=scope, strength=percent / 100, selection=selection)
        for scope in ("post", "prompt")
        for percent in (5, 10, 20, 40)
        for prefix, selection in (("", "features"), ("random-", "random"))
    },
}
# The pipeline's defaults (rank 16, lr 1e-3, balanced classes: docs/efficacy.md, "Settings search"), run for one
# whole epoch of whatever N gives, or the grid's step budget where that is shorter (``Grid.max_steps``).
RECIPE = TrainingConfig(num_epochs=1.0, max_steps=-1, eval_steps=16, save_steps=16, early_stopping_patience=4)


@dataclass(frozen=True)
class Grid:
    teachers: tuple[str, ...]
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    modes: tuple[str, ...]
    strengths: tuple[str, ...]
    val_posts: int
    kd_alphas: tuple[float, ...] = (0.0, 0.5)  # 0 = SFT only; each alpha > 0 is paired with it
    kd_temperature: float = 1.0
    held_out_posts: int = 200  # teacher-annotated posts no student sees, for the held-out teacher NLL (0 = none)
    max_steps: int = -1  # optimizer steps per training at most; -1 = one whole epoch of the balanced examples
    learning_rate: float = RECIPE.learning_rate  # per mode, chosen on the tuning split (--split tuning)

    @property
    def recipe(self) -> TrainingConfig:
        return RECIPE.model_copy(update={"learning_rate": self.learning_rate})


# The CPU preset is the required grid sized to fit an hour on 2 cores: every training stops after 64 steps
# (512 examples: one epoch at N = 250, a part of one at N = 1,000, so N varies the data at a fixed compute), SFT
# only and no held-out NLL (the KD arm and the strength sweep have their own commands: docs/efficacy.md).
GRIDS = {
    "cpu": Grid(
        ("reference", "embedded"), (250, 1000), (0, 1), ("none", "hard"), ("default",), 600, (0.0,), 1.0, 0, 64
    ),
    "gpu": Grid(("reference", "embedded"), (250, 1000, 4000), (0, 1, 2), MASK_MODES, ("default", "light"), 2000),
    # The mask where it could help (issue 26): 5 seeds, mode none, the random control, soft and hard at one scope
    # and strength (choose them on the tuning split first: --split tuning --strengths post-5 post-10 ...).
    "mask": Grid(
        ("reference",),
        (250,),
        (0, 1, 2, 3, 4),
        ("none", "hard", "soft"),
        ("post-20", "random-post-20"),
        0,
        (0.0,),
        1.0,
        0,
        64,
    ),
}
