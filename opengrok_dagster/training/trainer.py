"""The LoRA fine-tune: transformers ``Trainer`` + early stopping on validation loss, resumable, published atomically.

Layout under ``$OPENGROK_HOME/checkpoints/``: ``.work-<mode>/`` holds the Trainer's checkpoints (every
``save_steps``) and ``run.json`` (what the run trains on); a killed run with the same data and config resumes
from the last checkpoint there, anything else starts afresh. The finished adapter is staged in the work dir,
checked to load and generate with plain transformers + peft, then renamed to ``<mode>/``.

``train_lora`` is a sequence of ``_setup_*`` steps (tokenizer, data, work dir, model, trainer), the training
and ``_publish``. The loss reads response positions only (:class:`_ResponseLossTrainer`); under torchrun the
ranks train data-parallel and rank 0 alone publishes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from opengrok_dagster.distill.targets import KDTargets
from opengrok_dagster.publish import publish_directory
from opengrok_dagster.training import CHECKPOINT_RECORD
from opengrok_dagster.training.attention import attention_implementation, require_mask_mode
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.data import (
    IGNORE_INDEX,
    MaskCollator,
    TrainingData,
    balance_classes,
    load_training_data,
)
from opengrok_dagster.training.device import Placement
from opengrok_dagster.training.distill_loss import KD_INPUTS, distillation_loss
from opengrok_dagster.training.report import loss_curves, write_loss_plot, write_model_card


LORA_TARGETS_BY_ARCHITECTURE = (("qkv_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"))
VERIFY_PROMPT = "Write a short post about the weather."
TRAINING_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# report_to value -> (module it needs, extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tracking"), "mlflow": ("mlflow", "tracking")}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class LoraTargetError(ValueError):
    """The LoRA target modules are not in the model."""


class TrainingOptionUnavailableError(RuntimeError):
    """A training option (QLoRA, an experiment tracker) this machine or installation cannot run."""


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
    code_version: str = ""  # of the training code (the lora_checkpoint asset's): a code change retrains
    mask_options: dict = field(default_factory=dict)  # the mask table's config, recorded with the adapter

    @property
    def work_dir(self) -> Path:
        return self.checkpoint_dir.with_name(f".work-{self.checkpoint_dir.name}")

    @property
    def tensorboard_dir(self) -> Path:
        """Event files of ``report_to: tensorboard``, kept across runs (``tensorboard --logdir`` its parent)."""
        return self.checkpoint_dir.parent / "tensorboard" / self.checkpoint_dir.name


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
    mask_options: dict = field(default_factory=dict)  # the mask table's config (scope, selection, strength, ...)
    checkpoint_selection: str = "unmasked"
    reused: bool = False  # the published checkpoint already came from this data, config and model


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


class _ResponseLossTrainer(Trainer):
    """The loss from response positions only (+ the KD term), length-grouped batches, a stop at the first non-finite loss.

    The stock causal-LM loss projects every position onto the full vocabulary, though only response tokens
    carry labels; here the model body runs as usual (``logits_to_keep=1``), the hidden states of the positions
    that predict a response token are gathered, and only those go through the LM head. The sum over those
    tokens divided by ``num_items_in_batch`` is exactly the stock loss (same tokens, same normalisation).
    """

    def __init__(self, *args, lengths: Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lengths = list(lengths) if lengths is not None else None

    def _get_train_sampler(self, train_dataset=None):
        if self._lengths is None:
            return super()._get_train_sampler(train_dataset)
        # Grouped by the global batch (every rank draws the same order and takes its share of each batch), so
        # N processes train on the batches one process would. No generator of its own: the order comes from
        # torch's global RNG, which a resumed run restores.
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return LengthGroupedSampler(global_batch, lengths=self._lengths)

    kd_alpha, kd_temperature = 0.0, 1.0  # set by _setup_trainer from the config; 0 = cross-entropy only

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = {key: inputs.pop(key) for key in KD_INPUTS if key in inputs}
        if targets and self.kd_alpha and model.training:  # validation loss stays plain cross-entropy
            outputs = model(**inputs)  # the KL reads the student's distribution at every aligned position
            loss = distillation_loss(
                outputs.logits,
                labels,
                **targets,
                alpha=self.kd_alpha,
                temperature=self.kd_temperature,
                num_items_in_batch=num_items_in_batch,
            )
        else:
            outputs = model(**inputs, output_hidden_states=True, logits_to_keep=1)
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            loss = response_loss(outputs.hidden_states[-1], labels, head, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks; the count is global
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}: lower learning_rate, "
                "use precision fp32 or bf16 instead of fp16, or check the mask table for empty responses"
            )
        return loss


def response_loss(
    hidden_states: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, num_items_in_batch=None
) -> torch.Tensor:
    """Next-token cross-entropy at the labelled positions only (labels -100 elsewhere), as transformers' causal-LM
    loss: a sum over the tokens divided by ``num_items_in_batch`` when given, else their mean."""
    targets = labels[:, 1:].to(hidden_states.device)
    selected = targets != IGNORE_INDEX
    logits = head(hidden_states[:, :-1][selected]).float()
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, targets[selected])
    total = torch.nn.functional.cross_entropy(logits, targets[selected], reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


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
    """Identity of a run: a checkpoint resumes only a run with the same data, KD targets, config, model, mode and code."""
    digest = hashlib.sha256(kd.digest.encode() if kd else b"")  # without KD the key is what it always was
    identity = [job.mask_mode, job.model_path, job.config.model_dump(), job.placement.precision, job.code_version]
    digest.update(json.dumps(identity).encode())
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


def require_training_options(job: TrainingJob) -> None:
    """QLoRA needs CUDA and bitsandbytes, a tracker its package: refuse up front with the fix, before any loading."""
    config = job.config
    if config.load_in_4bit:
        if job.placement.device != "cuda":
            raise TrainingOptionUnavailableError(
                f"load_in_4bit (QLoRA) needs a CUDA GPU but this run trains on {job.placement.device}; "
                "set load_in_4bit to false or train on a CUDA machine"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainingOptionUnavailableError(
                "load_in_4bit (QLoRA) needs bitsandbytes: pip install 'opengrok-dagster[qlora]', "
                "or set load_in_4bit to false"
            )
    if config.report_to in TRACKERS:
        module, extra = TRACKERS[config.report_to]
        if importlib.util.find_spec(module) is None:
            raise TrainingOptionUnavailableError(
                f"report_to {config.report_to!r} needs the {module} package: pip install 'opengrok-dagster[{extra}]', "
                "or set report_to to 'none'"
            )


def train_lora(
    job: TrainingJob,
    table: pd.DataFrame,
    *,
    log: Callable[[str], None] = print,
    callbacks: Sequence[TrainerCallback] = (),
    kd_targets: pd.DataFrame | None = None,
) -> TrainingOutcome | None:
    """Fine-tune, verify and publish ``job.checkpoint_dir``; nothing is published if any step fails.

    Under ``torchrun`` / ``accelerate launch`` every rank trains its share of each batch (data-parallel); rank 0
    alone logs, publishes and returns the outcome; the other ranks return None after training.
    """
    require_mask_mode(job.mask_mode)
    require_training_options(job)
    job = replace(job, mask_options=mask_options_of(table))
    tokenizer = _setup_tokenizer(job)
    data = _setup_data(job, table, tokenizer, log)
    if job.config.kd_alpha and job.config.packing:
        raise TrainingOptionUnavailableError(
            "kd_alpha > 0 with packing: the KD targets follow one example per batch row; set packing to false"
        )
    kd = KDTargets.of(kd_targets, table, tokenizer) if job.config.kd_alpha else None
    key = run_key(job, data, kd)
    published = _published_outcome(job, key)
    if published is not None:
        log(f"{job.checkpoint_dir} is up to date (same data, config and model): nothing to train")
        return published
    args = _training_arguments(job, job.work_dir / "trainer")  # sets up the process group under torchrun
    if args.process_index:
        log = _silent
    if args.world_size > 1:
        log(
            f"data-parallel over {args.world_size} processes ({torch.distributed.get_backend()}), "
            f"{job.config.batch_size} examples per process per forward"
        )
    resume_from = _setup_work_dir(job, key, args, log)
    model, targets = _setup_model(job)
    progress = _Progress(log)
    trainer = _setup_trainer(job, args, model, tokenizer, data, [progress, *callbacks], kd)
    if resume_from:
        log(f"resuming from {resume_from.name}")
    if job.placement.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    outcome = None
    if trainer.is_world_process_zero():
        outcome = _publish(job, trainer, tokenizer, data, key, targets, progress, resume_from)
        log(f"published {job.checkpoint_dir}")
    trainer.accelerator.wait_for_everyone()
    return outcome


def mask_options_of(table: pd.DataFrame) -> dict:
    """The mask options the table was built with (scope, selection, strength, ...): its ``mask_config``."""
    if "mask_config" not in table.columns or table.empty:
        return {}
    return json.loads(table["mask_config"].iloc[0])


def _silent(_: str) -> None:
    """The log of ranks other than 0: one rank reports."""


def _setup_tokenizer(job: TrainingJob):
    tokenizer = AutoTokenizer.from_pretrained(job.model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _setup_data(job: TrainingJob, table: pd.DataFrame, tokenizer, log: Callable[[str], None]) -> TrainingData:
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


def _setup_work_dir(job: TrainingJob, key: str, args: TrainingArguments, log: Callable[[str], None]) -> Path | None:
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


def _setup_model(job: TrainingJob) -> tuple[torch.nn.Module, list[str]]:
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


def _setup_trainer(
    job: TrainingJob,
    args: TrainingArguments,
    model,
    tokenizer,
    data: TrainingData,
    callbacks: list[TrainerCallback],
    kd: KDTargets | None = None,
) -> Trainer:
    config = job.config
    if config.report_to == "tensorboard" and args.process_index == 0:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        callbacks = [*callbacks, TensorBoardCallback(SummaryWriter(log_dir=str(job.tensorboard_dir / stamp)))]
    collator = MaskCollator(
        tokenizer.pad_token_id, job.mask_mode, pack_to=config.max_length if config.packing else None
    )
    trainer = _ResponseLossTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=kd.collator(collator) if kd else collator,
        callbacks=[EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold), *callbacks],
        lengths=[len(example.input_ids) for example in data.train] if config.group_by_length else None,
    )
    trainer.kd_alpha, trainer.kd_temperature = job.config.kd_alpha, job.config.kd_temperature
    trainer.remove_callback(PrinterCallback)  # _Progress reports through ``log`` instead of stdout
    return trainer


def _publish(
    job: TrainingJob,
    trainer: Trainer,
    tokenizer,
    data: TrainingData,
    key: str,
    targets: list[str],
    progress: _Progress,
    resume_from: Path | None,
) -> TrainingOutcome:
    """Stage the adapter with its record, curves and card, check it loads and generates, then swap it in."""
    state = trainer.state
    train_tokens = int(state.num_input_tokens_seen - progress.tokens_at_start)
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
        tokens_per_second=train_tokens / progress.step_seconds if progress.step_seconds else 0.0,
        peak_memory_bytes=_peak_memory_bytes(job),
        device=job.placement.description,
        lora_targets=targets,
        sample_generation=sample,
        curves=curves,
        mask_options=job.mask_options,
        checkpoint_selection=job.config.checkpoint_selection,
    )
    (staging / "training_args.json").write_text(
        json.dumps({"config": job.config.model_dump(), "trainer": trainer.args.to_dict()}, indent=2, default=str)
    )
    (staging / "loss_curves.json").write_text(json.dumps(curves, indent=2))
    write_loss_plot(curves, staging / "loss_curves.png", title=f"{job.mask_mode} mask")
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
    write_model_card(staging / "README.md", outcome, job.config, job.data_versions)
    publish_directory(staging, job.checkpoint_dir)
    shutil.rmtree(job.work_dir)
    return outcome


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


def _peak_memory_bytes(job: TrainingJob) -> int:
    """Peak CUDA memory on a GPU, else the process's peak resident memory."""
    if job.placement.device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
