"""Where everything lives under ``$OPENGROK_HOME``: the one owner of that directory's layout.

Dagster-free, so the IO manager, the assets, the CLI, lineage, review and the benches all resolve the same
paths from here instead of spelling them again::

    assets/<asset>[/<partition dims, sorted by dimension name>].parquet   (resources.ParquetIOManager)
    checkpoints/<mask mode>/          published LoRA adapter      checkpoints/.work-<mode>/  Trainer state
    reports/report.md, report.html    mask_tables/tfidf-<sha>.json  the vocabulary each mask table used
    responses.sqlite  reviews.sqlite  eval_answers.sqlite           logs/   dagster_home/ (default DAGSTER_HOME)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ASSET_SUFFIX = ".parquet"


def partition_parts(partition: str | Mapping[str, str] | None) -> tuple[str, ...]:
    """A partition key as path segments: a multi-dimensional key by dimension name, as Dagster's UPathIOManager
    lays it out (``raw_responses/<round>/<topic>``)."""
    if partition is None:
        return ()
    if isinstance(partition, str):
        return (partition,)
    return tuple(partition[dimension] for dimension in sorted(partition))


@dataclass(frozen=True)
class HomeLayout:
    """The paths under one OpenGrok home directory. Nothing here creates a directory."""

    home: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))

    # Assets (published by resources.ParquetIOManager, whose base_dir is ``assets_dir``)
    @property
    def assets_dir(self) -> Path:
        return self.home / "assets"

    def asset_dir(self, asset: str) -> Path:
        """The directory of a partitioned asset's files."""
        return self.assets_dir / asset

    def asset_path(self, asset: str, partition: str | Mapping[str, str] | None = None) -> Path:
        parts = partition_parts(partition)
        if not parts:
            return self.assets_dir / f"{asset}{ASSET_SUFFIX}"
        return self.asset_dir(asset).joinpath(*parts[:-1], f"{parts[-1]}{ASSET_SUFFIX}")

    def collection_asset_path(self, asset: str, topic: str, round_key: str) -> Path:
        """A topic x round partition of ``prompts`` or ``raw_responses``."""
        return self.asset_path(asset, {"topic": topic, "round": round_key})

    @property
    def raw_responses_dir(self) -> Path:
        return self.asset_dir("raw_responses")

    @property
    def filtered_responses_path(self) -> Path:
        return self.asset_path("filtered_responses")

    @property
    def prompt_feedback_path(self) -> Path:
        return self.asset_path("prompt_feedback")

    # Checkpoints
    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    def checkpoint_dir(self, mask_mode: str) -> Path:
        """The published adapter of one mask mode (what ``lora_checkpoint[mode]``'s manifest points at)."""
        return self.checkpoints_dir / mask_mode

    def training_work_dir(self, mask_mode: str) -> Path:
        """The Trainer's resumable checkpoints of one mask mode (``training.trainer.TrainingJob.work_dir``)."""
        return self.checkpoints_dir / f".work-{mask_mode}"

    # Reports, vocabularies
    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def tfidf_vocabulary_dir(self) -> Path:
        return self.home / "mask_tables"

    # Stores: one SQLite file each, written by different hands (runs, reviewers, the evaluation)
    @property
    def response_store_path(self) -> Path:
        return self.home / "responses.sqlite"

    @property
    def review_store_path(self) -> Path:
        """Beside the response store, in its own file: reviews are written by people, responses by runs."""
        return self.home / "reviews.sqlite"

    @property
    def eval_answers_path(self) -> Path:
        return self.home / "eval_answers.sqlite"

    # Logs and the Dagster instance
    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def teacher_server_log(self) -> Path:
        return self.logs_dir / "teacher-server.log"

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance's directory when ``$DAGSTER_HOME`` is unset."""
        return self.home / "dagster_home"
