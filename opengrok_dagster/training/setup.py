"""The setup steps of ``train_lora``: tokenizer, data (class balancing, truncation), the resumable work dir,
the base model with its masked attention and LoRA adapter, and the ``TrainingArguments``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from opengrok_dagster.training.attention import attention_implementation
from opengrok_dagster.training.data import (
    TrainingData,
    balance_classes,
    load_training_data,
)
from opengrok_dagster.training.job import LoraTargetError, TrainingJob


LORA_TARGETS_BY_ARCHITECTURE = (("qkv_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"))
TRAINING_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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


def setup_tokenizer(job: TrainingJob):
    tokenizer = AutoTokenizer.from_pretrained(job.model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def setup_data(job: TrainingJob, table: pd.DataFrame, tokenizer, log: Callable[[str], None]) -> TrainingData:
    if job.config.balance_classes and "class_label" in table.columns:
        balanced = balance_classes(table, table["class_label"], job.config.seed, job.config.balance_min_class_examples)
        if len(balanced) > len(table):
            counts = table.loc[table["split"] == "train", "class_label"].value_counts().sort_index()
            log(
                f"balanced the train split's classes ({', '.join(f'{k} {v}' for k, v in counts.items())}) "
                f"to {counts.max()} each, classes under {job.config.balance_min_class_examples} kept as they are: "
                f"{len(balanced) - len(table)} rows repeated"
            )
        table = balanced
    data = load_training_data(table, tokenizer, job.config.max_length)
    if job.config.checkpoint_selection == "unmasked":
        # every mode's validation loss under stock attention (all m = p = 1), as the adapter is evaluated and served
        data = replace(
            data,
            validation=[replace(e, m=[1] * len(e.m), p=[1.0] * len(e.p)) for e in data.validation],
        )
    log(
        f"{len(data.train)} train / {len(data.validation)} validation examples "
        f"({data.truncated} cut to {job.config.max_length} tokens, "
        f"{data.dropped_without_response} without response tokens dropped)"
    )
    return data


def setup_work_dir(job: TrainingJob, key: str, args: TrainingArguments, log: Callable[[str], None]) -> Path | None:
    """Return the checkpoint to resume from; rank 0 first clears a work dir left by a different run."""
    record = job.work_dir / "run.json"
    with args.main_process_first(local=False, desc="preparing the work dir"):
        if args.process_index == 0:
            if job.work_dir.exists():
                previous = json.loads(record.read_text()).get("run_key") if record.exists() else None
                if previous != key:
                    log(f"discarding {job.work_dir}: left by a run with other data or config")
                    shutil.rmtree(job.work_dir)
            job.work_dir.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"run_key": key}))
    last = get_last_checkpoint(str(job.work_dir / "trainer")) if (job.work_dir / "trainer").exists() else None
    return Path(last) if last else None


def setup_model(job: TrainingJob) -> tuple[torch.nn.Module, list[str]]:
    """The base in the training precision (4-bit NF4 for QLoRA) with the masked attention, and its LoRA adapter."""
    dtype = TRAINING_DTYPES[job.placement.precision]
    quantization = {}
    if job.config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            ),
            "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))},
        }
    model = AutoModelForCausalLM.from_pretrained(
        job.model_path, dtype=dtype, attn_implementation=attention_implementation(job.mask_mode), **quantization
    )
    if job.config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=job.gradient_checkpointing)
    config = job.config
    targets = (
        require_lora_targets(model, config.target_modules) if config.target_modules else default_lora_targets(model)
    )
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), targets


def training_arguments(job: TrainingJob, output_dir: Path) -> TrainingArguments:
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
        prediction_loss_only=True,  # evaluation needs the loss only, not every batch's outputs gathered
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
        report_to=["mlflow"] if config.report_to == "mlflow" else [],  # tensorboard: a callback with our log dir
        run_name=f"opengrok-{job.mask_mode}",
        disable_tqdm=True,
    )


def mask_options_of(table: pd.DataFrame) -> dict:
    """The mask options the table was built with (scope, selection, strength, ...): its ``mask_config``."""
    if "mask_config" not in table.columns or table.empty:
        return {}
    return json.loads(table["mask_config"].iloc[0])
