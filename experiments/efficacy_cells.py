"""One cell of the efficacy experiment: the teacher's annotations as training examples, the mask table, the LoRA
trained by the pipeline's own trainer (within the grid's step budget), and the student scored (``seed_cells``
trains and scores every mode, strength and KD weight of one seed's examples)."""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.efficacy_grid import STRENGTHS, Grid
from experiments.efficacy_stats import (
    NLL,
    MeanScores,
    Measured,
    differences,
    estimate_dict,
    estimates,
    paired,
    per_class,
    scored,
    teacher_nll,
)
from experiments.efficacy_tasks import EfficacyTask, Prediction
from opengrok_dagster.distill.align import build_kd_targets
from opengrok_dagster.evaluation.bootstrap import Distribution, bootstrap
from opengrok_dagster.evaluation.local import LocalStudent, read_checkpoint
from opengrok_dagster.masks.builder import build_mask_table
from opengrok_dagster.tasks.formats import Annotation
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.data import balance_classes
from opengrok_dagster.training.job import TrainingJob
from opengrok_dagster.training.trainer import train_lora


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def examples_frame(
    task: EfficacyTask,
    posts: list[str],
    annotations: list[Annotation],
    split: str,
    prefix: str,
    logprobs: list[str | None] | None = None,
) -> pd.DataFrame:
    """Training examples in the mask builder's input shape: the evaluation's messages, the teacher's answer (as the
    task's format writes it), and the teacher's logprobs of that answer (the ``responses`` ``build_kd_targets``
    aligns)."""
    rows = []
    for index, (post, annotation) in enumerate(zip(posts, annotations)):
        system, user = task.format.messages(post)
        rows.append(
            {
                "example_id": f"{prefix}{index:05d}",
                "split": split,
                "system_prompt": system["content"],
                "prompt": user["content"],
                "response": task.format.answer(annotation),
                "class_label": task.class_label(annotation),  # what the trainer balances classes by
                "post_text": post,  # where the post lies in the prompt (mask scope "post")
            }
        )
    frame = pd.DataFrame(rows)
    # object, not pandas' str dtype, so an answer without logprobs stays None (build_kd_targets skips it)
    frame["logprobs"] = pd.Series(logprobs if logprobs is not None else [None] * len(frame), dtype=object)
    return frame


def masked_share(table: pd.DataFrame) -> float:
    """Share of content (non-template) tokens the hard mask hides."""
    masked = content = 0
    for m, template in zip(table["m"], table["template_token"]):
        content_tokens = ~np.asarray(template, dtype=bool)
        content += int(content_tokens.sum())
        masked += int((np.asarray(m)[content_tokens] == 0).sum())
    return masked / content if content else float("nan")


def steps_within_budget(table: pd.DataFrame, config: TrainingConfig, budget: int) -> int:
    """``max_steps`` for one training: one epoch of the train split as the trainer balances it, or ``budget``
    steps where that is fewer (-1, the trainer's whole ``num_epochs``, when there is no budget). transformers'
    ``max_steps`` overrides the epochs, so a budget alone would repeat a small N's examples until it is spent."""
    if budget < 1:
        return -1
    train = balance_classes(table, table["class_label"], config.seed, config.balance_min_class_examples)
    return min(budget, math.ceil(int((train["split"] == "train").sum()) / config.batch_size))


def arm_config(config: TrainingConfig, seed: int, kd_alpha: float, kd_temperature: float) -> TrainingConfig:
    """One arm's recipe: the same for SFT only and SFT + KD but the KD weight, unpacked for both (KD refuses
    packing, so the SFT arm must not differ by it)."""
    return config.model_copy(
        update={"seed": seed, "kd_alpha": kd_alpha, "kd_temperature": kd_temperature, "packing": False}
    )


def train_cell(
    model_path: str,
    table: pd.DataFrame,
    mode: str,
    directory: Path,
    config: TrainingConfig,
    placement,
    kd_targets: pd.DataFrame | None = None,
):
    job = TrainingJob(
        mode, model_path, directory / mode, config, placement, data_versions={"experiment": "distillation_efficacy"}
    )
    started = time.monotonic()
    outcome = train_lora(job, table, log=lambda message: None, kd_targets=kd_targets)
    log(
        f"trained {mode} (kd_alpha {config.kd_alpha}): {outcome.train_examples} examples, {outcome.global_step} "
        f"steps, val loss {outcome.best_val_loss:.3f}, {time.monotonic() - started:.0f}s"
    )
    return outcome, time.monotonic() - started


@dataclass
class Study:
    """What every cell of a run shares: the task, the student, the val resamples, the held-out posts, the headline
    scoring, the base."""

    task: EfficacyTask
    model_path: str
    placement: object
    indices: np.ndarray
    threads: int
    tokenizer: object
    nlp: object
    held_out: list  # the held-out annotated posts' messages (label tasks with held-out posts)
    headline: str  # the scoring comparisons are Holm-corrected in (``--scoring``)
    base: dict[str, Distribution] | None = None  # the base's scores, set once it is scored
    base_prediction: Prediction | None = None

    def predict(self, student: LocalStudent, variant: str) -> Prediction:
        started = time.monotonic()
        prediction = self.task.predict(student, variant, self.held_out)
        log(
            f"{variant}: scored {len(self.task.val_texts)} val and {len(self.held_out)} held-out posts in "
            f"{time.monotonic() - started:.0f}s"
        )
        return prediction

    def measure(self, student: LocalStudent, variant: str, held_labels: np.ndarray | None, held_indices) -> Measured:
        prediction = self.predict(student, variant)
        nll = None
        if held_indices is not None:
            nll = bootstrap(MeanScores(teacher_nll(prediction.held, held_labels)), held_indices)
        return Measured(scored(self.task, prediction, self.indices), nll, prediction)


def train_and_measure(
    study: Study,
    table: pd.DataFrame,
    mode: str,
    directory: Path,
    config: TrainingConfig,
    kd_targets: pd.DataFrame | None,
    held_labels: np.ndarray | None,
    held_indices,
):
    """One student trained on the mask table in ``mode`` and scored (its model freed before the next trains); the
    training outcome, its seconds and the student's scores."""
    outcome, seconds = train_cell(study.model_path, table, mode, directory, config, study.placement, kd_targets)
    checkpoint = read_checkpoint(directory / mode, mode)
    student = LocalStudent(study.model_path, [checkpoint], threads=study.threads)
    return outcome, seconds, study.measure(student, checkpoint.variant, held_labels, held_indices)


def seed_cells(study: Study, grid: Grid, examples: pd.DataFrame, seed: int, alphas, held_labels, held_indices):
    """Train and score every (strength, mode, kd_alpha) of one seed's examples; yields (cell record, scores).

    Each KD arm trains on exactly the SFT arm's table (same mask, class balance, steps and recipe) and is paired
    with it; each masked mode is paired with the same seed's and alpha's mode-none student.
    """
    tokenizer, metric = study.tokenizer, study.task.metric
    unmasked: dict[float, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="efficacy-") as scratch:
        for strength in grid.strengths:
            mask = build_mask_table(
                examples, tokenizer, study.nlp, STRENGTHS[strength].model_copy(update={"seed": seed})
            ).table
            share = masked_share(mask[mask["split"] == "train"])
            kd = build_kd_targets(mask, examples, tokenizer) if any(alpha > 0 for alpha in alphas) else None
            if kd is not None:
                log(f"kd_targets: {kd.aligned_share:.1%} of response tokens aligned ({kd.rows_with_logprobs} rows)")
            for mode in grid.modes:
                if mode == "none" and strength != grid.strengths[0]:
                    continue  # mode none ignores the mask: one run covers every strength
                sft = None
                for alpha in alphas:
                    config = arm_config(grid.recipe, seed, alpha, grid.kd_temperature)
                    config = config.model_copy(update={"max_steps": steps_within_budget(mask, config, grid.max_steps)})
                    directory = Path(scratch) / strength / f"kd{alpha:g}"
                    targets = kd.table if alpha > 0 else None
                    outcome, seconds, measured = train_and_measure(
                        study, mask, mode, directory, config, targets, held_labels, held_indices
                    )
                    if alpha == 0:
                        sft = measured
                    if mode == "none":
                        unmasked[alpha] = measured
                    versus_none = unmasked.get(alpha) if mode != "none" else None
                    yield (
                        {
                            "mode": mode,
                            "strength": strength if mode != "none" else "-",
                            "kd_alpha": alpha,
                            "kd_temperature": grid.kd_temperature if alpha > 0 else None,
                            "kd_aligned_share": kd.aligned_share if kd is not None and alpha > 0 else None,
                            "masked_share": share if mode != "none" else 0.0,
                            "train_examples_balanced": outcome.train_examples,
                            "steps": outcome.global_step,
                            "train_seconds": round(seconds),
                            "student": estimates(measured.scores, metric),
                            "per_class": per_class(study.task, measured.prediction, measured.scores),
                            "difference": differences(measured.scores, study.base, metric),
                            "minus_none": differences(measured.scores, versus_none and versus_none.scores, metric),
                            "teacher_nll": estimate_dict(measured.nll.estimate(NLL)) if measured.nll else None,
                            "kd_minus_sft": differences(measured.scores, sft.scores, metric)
                            if alpha > 0 and sft
                            else None,
                            "nll_kd_minus_sft": paired(measured.nll, sft.nll, NLL) if alpha > 0 and sft else None,
                        },
                        measured,
                    )
