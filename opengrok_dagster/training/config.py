"""Every hyper-parameter of the fine-tune, in one config (the Dagster config class inherits these fields).

Defaults are sized for a CPU: SmolLM2-135M on a few hundred short annotation examples trains one mask mode in
about a minute and a half; the recipe (rank 16, lr 1e-3, balanced classes) is the one docs/efficacy.md measured.
For a real run on a GPU raise ``max_length``, ``num_epochs`` and ``max_steps`` (opengrok_dagster/config/profiles/gpu.yaml).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainingConfig(BaseModel):
    """LoRA fine-tune hyper-parameters (report 3.3.2: cross-entropy on response tokens, AdamW, early stopping)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    learning_rate: float = Field(
        default=1e-3, gt=0, description="Peak AdamW learning rate (linear decay after warm-up)."
    )
    batch_size: int = Field(default=8, ge=1, description="Examples per device per forward pass.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, description="Forward passes accumulated per optimizer step."
    )
    num_epochs: float = Field(default=2.0, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: int = Field(default=40, description="Stop after this many optimizer steps; -1 runs num_epochs in full.")
    warmup_steps: int = Field(default=4, ge=0, description="Optimizer steps of linear learning-rate warm-up.")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW decoupled weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient-norm clipping threshold.")
    max_length: int = Field(
        default=128, ge=8, description="Tokens per example (prompt + response); longer rows of the mask table are cut."
    )
    eval_steps: int = Field(default=8, ge=1, description="Optimizer steps between validation-loss evaluations.")
    save_steps: int = Field(
        default=8, ge=1, description="Optimizer steps between resumable checkpoints (a multiple of eval_steps)."
    )
    early_stopping_patience: int = Field(
        default=3, ge=1, description="Evaluations without improvement before training stops."
    )
    early_stopping_threshold: float = Field(
        default=0.0, ge=0, description="Smallest validation-loss decrease that counts as improvement."
    )
    checkpoint_selection: Literal["unmasked", "masked"] = Field(
        default="unmasked",
        description="Validation loss the best checkpoint (and early stopping) is chosen on: 'unmasked' (stock "
        "attention, as the evaluation and serving run the adapter) or 'masked' (the mask mode's own attention).",
    )
    logging_steps: int = Field(default=1, ge=1, description="Optimizer steps between loss reports to the run log.")
    seed: int = Field(
        default=0, description="Seed for LoRA initialisation, dropout and data order (equal seeds give equal runs)."
    )
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    balance_classes: bool = Field(
        default=True,
        description="Oversample the train split's single-label annotations (mask_tables' class_label) so every class "
        "has as many examples as the largest: a small student trained on the teacher's label mix learns the prior.",
    )
    balance_min_class_examples: int = Field(
        default=8,
        ge=1,
        description="Classes with fewer train examples than this are not oversampled (a teacher that almost never "
        "gives a label leaves too few posts to learn it from; repeated, they would be memorised).",
    )
    group_by_length: bool = Field(
        default=True,
        description="Draw batches of similar length (seeded, as transformers' LengthGroupedSampler): less padding.",
    )
    packing: bool = Field(
        default=False,
        description=(
            "Pack each batch's examples into rows of up to max_length tokens with a block-diagonal attention mask "
            "that keeps every example's own token mask; the loss is the same as unpacked."
        ),
    )
    report_to: Literal["none", "tensorboard", "mlflow"] = Field(
        default="none",
        description=(
            "Where the loss curves also go: 'tensorboard' (event files under checkpoints/tensorboard/<mode>/) "
            "or 'mlflow' (MLFLOW_TRACKING_URI); they are always in the checkpoint's loss_curves.json."
        ),
    )
    load_in_4bit: bool = Field(
        default=False,
        description="QLoRA: load the frozen base in 4-bit NF4 (bitsandbytes, CUDA only; the 'qlora' extra).",
    )
    kd_alpha: float = Field(
        default=0.0,
        ge=0,
        description="Weight of the KL to the teacher's top-k logprobs (kd_targets) per aligned token; 0 = CE only.",
    )
    kd_temperature: float = Field(
        default=1.0, gt=0, description="Temperature of the distillation KL (scaled by its square); 1 = as sampled."
    )
    target_modules: list[str] | None = Field(
        default=None,
        description="Module names LoRA adapts; unset = per architecture (q/k/v/o_proj, or qkv_proj/o_proj for Phi-3).",
    )

    @model_validator(mode="after")
    def _checkpoints_align_with_evaluations(self):
        if self.save_steps % self.eval_steps:
            raise ValueError(
                f"save_steps={self.save_steps} must be a multiple of eval_steps={self.eval_steps}: "
                "the best checkpoint is chosen by validation loss"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps={self.max_steps}: use a positive step count, or -1 to run num_epochs")
        return self
