"""The LoRA fine-tune: transformers ``Trainer`` + early stopping on validation loss, resumable, published atomically.

Layout under ``$OPENGROK_HOME/checkpoints/``: ``.work-<mode>/`` holds the Trainer's checkpoints (every
``save_steps``) and ``run.json`` (what the run trains on); a killed run with the same data and config resumes
from the last checkpoint there, anything else starts afresh. The finished adapter is staged in the work dir,
checked to load and generate with plain transformers + peft, then renamed to ``<mode>/``.

``train_lora`` is a sequence of setup steps (``training/setup.py``: tokenizer, data, work dir, model), the
trainer's setup, the training and the publishing (``training/publishing.py``). The loss reads response positions only (:class:`_ResponseLossTrainer`); under torchrun the
ranks train data-parallel and rank 0 alone publishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import pandas as pd
import torch
from transformers import (
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from opengrok_dagster.distill.loss import KD_INPUTS, distillation_loss
from opengrok_dagster.distill.targets import KDTargets
from opengrok_dagster.training.attention import require_mask_mode
from opengrok_dagster.training.data import (
    IGNORE_INDEX,
    MaskCollator,
    TrainingData,
)
from opengrok_dagster.training.job import (
    NonFiniteLossError,
    TrainingJob,
    TrainingOptionUnavailableError,
    TrainingOutcome,
    published_outcome,
    require_training_options,
    run_key,
)
from opengrok_dagster.training.publishing import publish_adapter
from opengrok_dagster.training.setup import (
    mask_options_of,
    setup_data,
    setup_model,
    setup_tokenizer,
    setup_work_dir,
    training_arguments,
)


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
    tokenizer = setup_tokenizer(job)
    data = setup_data(job, table, tokenizer, log)
    if job.config.kd_alpha and job.config.packing:
        raise TrainingOptionUnavailableError(
            "kd_alpha > 0 with packing: the KD targets follow one example per batch row; set packing to false"
        )
    kd = KDTargets.of(kd_targets, table, tokenizer) if job.config.kd_alpha else None
    key = run_key(job, data, kd)
    published = published_outcome(job, key)
    if published is not None:
        log(f"{job.checkpoint_dir} is up to date (same data, config and model): nothing to train")
        return published
    args = training_arguments(job, job.work_dir / "trainer")  # sets up the process group under torchrun
    if args.process_index:
        log = _silent
    if args.world_size > 1:
        log(
            f"data-parallel over {args.world_size} processes ({torch.distributed.get_backend()}), "
            f"{job.config.batch_size} examples per process per forward"
        )
    resume_from = setup_work_dir(job, key, args, log)
    model, targets = setup_model(job)
    progress = _Progress(log)
    trainer = _setup_trainer(job, args, model, tokenizer, data, [progress, *callbacks], kd)
    if resume_from:
        log(f"resuming from {resume_from.name}")
    if job.placement.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    outcome = None
    if trainer.is_world_process_zero():
        train_tokens = int(trainer.state.num_input_tokens_seen - progress.tokens_at_start)
        outcome = publish_adapter(
            job, trainer, tokenizer, data, key, targets, resume_from, train_tokens, progress.step_seconds
        )
        log(f"published {job.checkpoint_dir}")
    trainer.accelerator.wait_for_everyone()
    return outcome


def _silent(_: str) -> None:
    """The log of ranks other than 0: one rank reports."""


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
