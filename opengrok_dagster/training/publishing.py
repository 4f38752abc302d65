"""Publishing a trained adapter: staged in the work dir with its record, curves and card, checked to load and
generate with plain transformers + peft, then swapped into ``$OPENGROK_HOME/checkpoints/<mode>/`` atomically."""

from __future__ import annotations

import json
import math
import resource
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
)

from opengrok_dagster.publish import publish_directory
from opengrok_dagster.training import CHECKPOINT_RECORD
from opengrok_dagster.training.data import (
    TrainingData,
)
from opengrok_dagster.training.device import Placement
from opengrok_dagster.training.job import TrainingJob, TrainingOutcome
from opengrok_dagster.training.report import loss_curves, write_loss_plot, write_model_card


VERIFY_PROMPT = "Write a short post about the weather."


def publish_adapter(
    job: TrainingJob,
    trainer: Trainer,
    tokenizer,
    data: TrainingData,
    key: str,
    targets: list[str],
    resume_from: Path | None,
    train_tokens: int,
    step_seconds: float,
) -> TrainingOutcome:
    """Stage the adapter with its record, curves and card, check it loads and generates, then swap it in.
    ``train_tokens`` and ``step_seconds`` are this run's (a resumed run counts from where it resumed)."""
    state = trainer.state
    curves = loss_curves(state.log_history)
    staging = job.work_dir / "adapter"
    if staging.exists():
        shutil.rmtree(staging)
    trainer.model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    sample = verify_adapter(staging, job.model_path, job.placement)
    outcome = TrainingOutcome(
        mask_mode=job.mask_mode,
        adapter_dir=str(job.checkpoint_dir),
        base_model=job.model_path,
        best_val_loss=float(state.best_metric if state.best_metric is not None else math.nan),
        best_step=int(state.best_global_step or state.global_step),
        global_step=int(state.global_step),
        early_stopped=bool(state.global_step < state.max_steps),
        resumed_from_step=int(resume_from.name.rsplit("-", 1)[-1]) if resume_from else 0,
        train_examples=len(data.train),
        validation_examples=len(data.validation),
        truncated_examples=data.truncated,
        dropped_examples=data.dropped_without_response,
        train_tokens=train_tokens,
        tokens_per_second=train_tokens / step_seconds if step_seconds else 0.0,
        peak_memory_bytes=peak_memory_bytes(job),
        device=job.placement.description,
        lora_targets=targets,
        sample_generation=sample,
        curves=curves,
        mask_options=job.mask_options,
        checkpoint_selection=job.config.checkpoint_selection,
    )
    _write_records(staging, job, trainer, data, key, outcome)
    write_model_card(staging / "README.md", outcome, job.config, job.data_versions)
    publish_directory(staging, job.checkpoint_dir)
    shutil.rmtree(job.work_dir)
    return outcome


def _write_records(
    staging: Path, job: TrainingJob, trainer: Trainer, data: TrainingData, key: str, outcome: TrainingOutcome
) -> None:
    """What the adapter directory records beside the weights: the training arguments, the loss curves (JSON and
    plot) and the checkpoint record that lineage, reuse and the evaluation read."""
    (staging / "training_args.json").write_text(
        json.dumps({"config": job.config.model_dump(), "trainer": trainer.args.to_dict()}, indent=2, default=str)
    )
    (staging / "loss_curves.json").write_text(json.dumps(outcome.curves, indent=2))
    write_loss_plot(outcome.curves, staging / "loss_curves.png", title=f"{job.mask_mode} mask")
    (staging / CHECKPOINT_RECORD).write_text(
        json.dumps(
            {
                **{k: v for k, v in asdict(outcome).items() if k != "curves"},
                "run_key": key,
                "data_versions": job.data_versions,
                "code_version": job.code_version,
                "example_ids": sorted(e.example_id for e in data.train + data.validation),
                "train_example_ids": sorted(e.example_id for e in data.train),
            },
            indent=2,
        )
    )


def verify_adapter(adapter_dir: Path, model_path: str, placement: Placement = Placement("cpu", "fp32")) -> str:
    """Load the adapter with plain transformers + peft (stock attention) on the training device, in its precision
    (as the evaluation will load it), and greedily generate a few tokens."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(placement.precision, torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(placement.device)
    if base.config._attn_implementation.startswith("opengrok_"):
        raise RuntimeError(
            f"the base model at {model_path} asks for the training-only attention; it must load with stock attention"
        )
    model = PeftModel.from_pretrained(base, str(adapter_dir)).to(placement.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if tokenizer.chat_template:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": VERIFY_PROMPT}],
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        )
    else:
        inputs = tokenizer(VERIFY_PROMPT, return_tensors="pt")
    inputs = inputs.to(placement.device)
    with torch.no_grad():
        generated = model.generate(
            **inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id
        )
    return tokenizer.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def peak_memory_bytes(job: TrainingJob) -> int:
    """Peak CUDA memory on a GPU, else the process's peak resident memory."""
    if job.placement.device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
