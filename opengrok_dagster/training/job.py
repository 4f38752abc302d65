"""What one fine-tune is (``TrainingJob``) and what it produced (``TrainingOutcome``), the run key that decides
whether a published adapter is already this run's, and the up-front refusals of options this machine cannot run."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField

from opengrok_dagster.distill.targets import KDTargets
from opengrok_dagster.training import CHECKPOINT_RECORD
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.data import (
    TrainingData,
)
from opengrok_dagster.training.device import Placement


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
    reused: bool = False  # the published checkpoint already came from this data, config and model
    mask_options: dict = field(default_factory=dict)  # the mask table's config (scope, selection, strength, ...)
    checkpoint_selection: str = "unmasked"


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


def run_key(job: TrainingJob, data: TrainingData, kd: KDTargets | None = None) -> str:
    """Identity of a run: a checkpoint resumes only a run with the same data, KD targets, config, model, mode and code."""
    digest = hashlib.sha256(kd.digest.encode() if kd else b"")  # without KD the key is what it always was
    identity = [job.mask_mode, job.model_path, job.config.model_dump(), job.placement.precision, job.code_version]
    digest.update(json.dumps(identity).encode())
    for example in data.train + data.validation:
        digest.update(json.dumps(asdict(example)).encode())
    return digest.hexdigest()[:16]


def published_outcome(job: TrainingJob, key: str) -> TrainingOutcome | None:
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


class TrainingRequest(BaseModel):
    """What the training subprocess is asked to do: the Pipes extras, typed and checked on both sides.

    The asset fills the data fields, the training resource the device fields; the subprocess validates the extras
    back into this model (a bad value is a ``ValidationError``, reported as bad input) and builds its job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mask_mode: str = PydanticField(description="The mask mode partition trained.")
    model_path: str = PydanticField(description="The student base model: a hub id or a local directory.")
    checkpoint_dir: str = PydanticField(description="Where the adapter is published.")
    table_path: str = PydanticField(description="The mask table's scratch Parquet file.")
    config: TrainingConfig
    data_versions: dict[str, str] = PydanticField(default_factory=dict, description="Input data versions, recorded.")
    code_version: str = PydanticField(description="The training code's version: part of the run key.")
    kd_targets_path: str | None = PydanticField(
        default=None, description="kd_targets' Parquet file when kd_alpha > 0."
    )
    # Set by the training resource, which knows the machine.
    device: str | None = PydanticField(default=None, description="Training device.")
    precision: str | None = PydanticField(default=None, description="Training precision.")
    gradient_checkpointing: bool = PydanticField(default=False, description="Recompute activations to save memory.")

    def job(self, placement: Placement) -> TrainingJob:
        return TrainingJob(
            mask_mode=self.mask_mode,
            model_path=self.model_path,
            checkpoint_dir=Path(self.checkpoint_dir),
            config=self.config,
            placement=placement,
            gradient_checkpointing=self.gradient_checkpointing,
            data_versions=dict(self.data_versions),
            code_version=self.code_version,
        )
