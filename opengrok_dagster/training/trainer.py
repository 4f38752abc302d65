"""The LoRA fine-tune: transformers ``Trainer`` + early stopping on validation loss, resumable, published atomically.

Layout under ``$OPENGROK_HOME/checkpoints/``: ``.work-<mode>/`` holds the Trainer's checkpoints (every
``save_steps``) and ``run.json`` (what the run trains on); a killed run with the same data and config resumes
from the last checkpoint there, anything else starts afresh. The finished adapter is staged in the work dir,
checked to load and generate with plain transformers + peft, then renamed to ``<mode>/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from opengrok_dagster.distill.targets import KDTargets
from opengrok_dagster.training import CHECKPOINT_RECORD
from opengrok_dagster.training.attention import attention_implementation, require_mask_mode
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.data import MaskCollator, TrainingData, load_training_data
from opengrok_dagster.training.device import Placement
from opengrok_dagster.training.distill_loss import KD_INPUTS, distillation_loss
from opengrok_dagster.training.report import loss_curves, write_loss_plot, write_model_card

LORA_TARGETS_BY_ARCHITECTURE = (("qkv_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"))
VERIFY_PROMPT = "Write a short post about the weather."


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class LoraTargetError(ValueError):
    """The LoRA target modules are not in the model."""


@dataclass(frozen=True)
class TrainingJob:
    """What to train and where: one mask mode of one student on one mask table."""

    mask_mode: str
    model_path: str
    checkpoint_dir: Path
    config: TrainingConfig
    placement: Placement
    gradient_checkpointing: bool = False
    data_versions: dict = field(default_factory=dict)

    @property
    def work_dir(self) -> Path:
        return self.checkpoint_dir.with_name(f".work-{self.checkpoint_dir.name}")


@dataclass(frozen=True)
class TrainingOutcome:
    mask_mode: str
    adapter_dir: str
    base_model: str
    best_val_loss: float
    best_step: int
    global_step: int
    early_stopped: bool
    resumed_from_step: int
    train_examples: int
    validation_examples: int
    truncated_examples: int
    dropped_examples: int
    train_tokens: int
    tokens_per_second: float
    peak_memory_bytes: int
    device: str
    lora_targets: list
    sample_generation: str
    curves: dict
    reused: bool = False  # the published checkpoint already came from this data, config and model

    def manifest_row(self) -> dict:
        """The ``lora_checkpoint`` contract columns."""
        keys = ("mask_mode", "adapter_dir", "base_model", "best_val_loss", "global_step", "early_stopped",
                "train_examples", "validation_examples", "tokens_per_second")
        return {key: getattr(self, key) for key in keys}


def default_lora_targets(model: torch.nn.Module) -> list[str]:
    """``qkv_proj``/``o_proj`` for fused-attention models (Phi-3), else ``q/k/v/o_proj`` (Llama family)."""
    names = _linear_leaf_names(model)
    for targets in LORA_TARGETS_BY_ARCHITECTURE:
        if set(targets) <= names:
            return list(targets)
    raise LoraTargetError(
        f"{type(model).__name__} has no known attention projections for LoRA (linear layers: {sorted(names)}); "
        "set target_modules in the training config"
    )


def require_lora_targets(model: torch.nn.Module, targets: Sequence[str]) -> list[str]:
    names = _linear_leaf_names(model)
    missing = sorted(set(targets) - names)
    if missing:
        raise LoraTargetError(
            f"LoRA target modules {missing} are not in {type(model).__name__} (linear layers: {sorted(names)}); "
            "fix target_modules in the training config or leave it unset for the per-architecture default"
        )
    return list(targets)


def _linear_leaf_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


class _FiniteLossTrainer(Trainer):
    """Stops at the first non-finite loss (Trainer itself only filters NaN out of its logs); adds the KD term."""

    kd_alpha, kd_temperature = 0.0, 1.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = {key: inputs.pop(key) for key in KD_INPUTS if key in inputs}
        if not (targets and self.kd_alpha and model.training):  # validation loss stays plain cross-entropy
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels, num_items = inputs.pop("labels"), num_items_in_batch if self.model_accepts_loss_kwargs else None
        outputs = model(**inputs)
        loss = distillation_loss(
            outputs.logits, labels, **targets, alpha=self.kd_alpha, temperature=self.kd_temperature,
            num_items_in_batch=num_items,
        )
        if self.args.average_tokens_across_devices and num_items is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss scales the cross-entropy
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}: lower learning_rate, "
                "use precision fp32 or bf16 instead of fp16, or check the mask table for empty responses"
            )
        return loss


class _Progress(TrainerCallback):
    """Streams losses to ``log`` and times optimizer steps (evaluation and saving excluded) for tokens/s."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.step_seconds = 0.0
        self.tokens_at_start = 0
        self._step_started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_at_start = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds += time.perf_counter() - self._step_started

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in (logs or {}).items()}
        self.log(f"step {state.global_step}/{state.max_steps}: {shown}")


def run_key(job: TrainingJob, data: TrainingData, kd: KDTargets | None = None) -> str:
    """Identity of a run: a checkpoint resumes only a run with the same data, config, model and mode."""
    digest = hashlib.sha256(kd.digest.encode() if kd else b"")
    digest.update(json.dumps([job.mask_mode, job.model_path, job.config.model_dump(), job.placement.precision]).encode())
    for example in data.train + data.validation:
        digest.update(json.dumps(asdict(example)).encode())
    return digest.hexdigest()[:16]


def _published_outcome(job: TrainingJob, key: str) -> TrainingOutcome | None:
    """The outcome of the published checkpoint when it was trained by this very run key, else None."""
    record_path = job.checkpoint_dir / CHECKPOINT_RECORD
    if not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    if record.get("run_key") != key:
        return None
    names = {f.name for f in fields(TrainingOutcome)} - {"curves", "reused"}
    curves = json.loads((job.checkpoint_dir / "loss_curves.json").read_text())
    return TrainingOutcome(**{name: record[name] for name in names}, curves=curves, reused=True)


def _prepare_work_dir(job: TrainingJob, key: str, log: Callable[[str], None]) -> Path | None:
    """Return the checkpoint to resume from, clearing a work dir left by a different run."""
    record = job.work_dir / "run.json"
    if job.work_dir.exists():
        previous = json.loads(record.read_text()).get("run_key") if record.exists() else None
        if previous != key:
            log(f"discarding {job.work_dir}: left by a run with other data or config")
            shutil.rmtree(job.work_dir)
    job.work_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"run_key": key}))
    last = get_last_checkpoint(str(job.work_dir / "trainer")) if (job.work_dir / "trainer").exists() else None
    return Path(last) if last else None


def _training_arguments(job: TrainingJob, output_dir: Path) -> TrainingArguments:
    config = job.config
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        lr_scheduler_type="linear",
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=job.placement.device == "cpu",
        bf16=job.placement.precision == "bf16",
        fp16=job.placement.precision == "fp16",
        activation_checkpointing=job.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if job.gradient_checkpointing else None,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # the collator's token_mask must reach the model's forward
        dataloader_num_workers=0,
        report_to=[],
        disable_tqdm=True,
    )


def train_lora(
    job: TrainingJob,
    table: pd.DataFrame,
    *,
    log: Callable[[str], None] = print,
    callbacks: Sequence[TrainerCallback] = (),
    kd_targets: pd.DataFrame | None = None,
) -> TrainingOutcome:
    """Fine-tune, verify and publish ``job.checkpoint_dir``; nothing is published if any step fails."""
    require_mask_mode(job.mask_mode)
    tokenizer = AutoTokenizer.from_pretrained(job.model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = load_training_data(table, tokenizer, job.config.max_length)
    log(
        f"{len(data.train)} train / {len(data.validation)} validation examples "
        f"({data.truncated} cut to {job.config.max_length} tokens, {data.dropped_without_response} without response tokens dropped)"
    )
    kd = KDTargets.of(kd_targets, table, tokenizer) if job.config.kd_alpha else None
    key = run_key(job, data, kd)
    published = _published_outcome(job, key)
    if published is not None:
        log(f"{job.checkpoint_dir} is up to date (same data, config and model): nothing to train")
        return published
    resume_from = _prepare_work_dir(job, key, log)

    model = AutoModelForCausalLM.from_pretrained(
        job.model_path, dtype=torch.float32, attn_implementation=attention_implementation(job.mask_mode)
    )
    targets = require_lora_targets(model, job.config.target_modules) if job.config.target_modules else default_lora_targets(model)
    torch.manual_seed(job.config.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=job.config.lora_r, lora_alpha=job.config.lora_alpha, lora_dropout=job.config.lora_dropout,
            target_modules=targets, task_type="CAUSAL_LM",
        ),
    )
    progress = _Progress(log)
    collator = MaskCollator(tokenizer.pad_token_id, job.mask_mode)
    trainer = _FiniteLossTrainer(
        model=model,
        args=_training_arguments(job, job.work_dir / "trainer"),
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=kd.collator(collator) if kd else collator,
        callbacks=[
            EarlyStoppingCallback(job.config.early_stopping_patience, job.config.early_stopping_threshold),
            progress,
            *callbacks,
        ],
    )
    trainer.kd_alpha, trainer.kd_temperature = job.config.kd_alpha, job.config.kd_temperature
    trainer.remove_callback(PrinterCallback)  # _Progress reports through ``log`` instead of stdout
    if resume_from:
        log(f"resuming from {resume_from.name}")
    if job.placement.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    train_tokens = int(state.num_input_tokens_seen - progress.tokens_at_start)
    best_step = int(state.best_global_step or state.global_step)
    curves = loss_curves(state.log_history)

    staging = job.work_dir / "adapter"
    if staging.exists():
        shutil.rmtree(staging)
    trainer.model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    sample = verify_adapter(staging, job.model_path)
    outcome = TrainingOutcome(
        mask_mode=job.mask_mode,
        adapter_dir=str(job.checkpoint_dir),
        base_model=job.model_path,
        best_val_loss=float(state.best_metric if state.best_metric is not None else math.nan),
        best_step=best_step,
        global_step=int(state.global_step),
        early_stopped=bool(state.global_step < state.max_steps),
        resumed_from_step=int(resume_from.name.rsplit("-", 1)[-1]) if resume_from else 0,
        train_examples=len(data.train),
        validation_examples=len(data.validation),
        truncated_examples=data.truncated,
        dropped_examples=data.dropped_without_response,
        train_tokens=train_tokens,
        tokens_per_second=train_tokens / progress.step_seconds if progress.step_seconds else 0.0,
        peak_memory_bytes=_peak_memory_bytes(job),
        device=job.placement.description,
        lora_targets=targets,
        sample_generation=sample,
        curves=curves,
    )
    (staging / "training_args.json").write_text(
        json.dumps({"config": job.config.model_dump(), "trainer": trainer.args.to_dict()}, indent=2, default=str)
    )
    (staging / "loss_curves.json").write_text(json.dumps(curves, indent=2))
    write_loss_plot(curves, staging / "loss_curves.png", title=f"{job.mask_mode} mask")
    (staging / CHECKPOINT_RECORD).write_text(json.dumps(
        {
            **{k: v for k, v in asdict(outcome).items() if k != "curves"},
            "run_key": key,
            "data_versions": job.data_versions,
            "example_ids": sorted(e.example_id for e in data.train + data.validation),
            "train_example_ids": sorted(e.example_id for e in data.train),
        },
        indent=2,
    ))
    write_model_card(staging / "README.md", outcome, job.config, job.data_versions)
    publish_directory(staging, job.checkpoint_dir)
    shutil.rmtree(job.work_dir)
    log(f"published {job.checkpoint_dir}")
    return outcome


def verify_adapter(adapter_dir: Path, model_path: str) -> str:
    """Load the adapter with plain transformers + peft (stock attention) and greedily generate a few tokens."""
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if base.config._attn_implementation.startswith("opengrok_"):
        raise RuntimeError(f"the base model at {model_path} asks for the training-only attention; it must load with stock attention")
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.chat_template:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": VERIFY_PROMPT}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
    else:
        inputs = tokenizer(VERIFY_PROMPT, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def publish_directory(staging: Path, target: Path) -> None:
    """Swap ``staging`` in as ``target`` by rename; the previous ``target`` stays whole until the swap."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(staging, target)
        return
    retired = target.with_name(f".{target.name}.retired-{os.getpid()}")
    os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired)


def _peak_memory_bytes(job: TrainingJob) -> int:
    """Peak CUDA memory on a GPU, else the process's peak resident memory."""
    if job.placement.device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
