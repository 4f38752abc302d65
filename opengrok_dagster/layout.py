"""Where everything lives under ``$OPENGROK_HOME``: the one owner of that directory's layout.

Dagster-free, so the IO manager, the assets, the CLI, lineage, review and the benches all resolve the same
paths from here instead of spelling them again::

    assets/<asset>[/<partition dims, sorted by dimension name>].parquet   (resources.ParquetIOManager)
    checkpoints/<mask mode>/          published LoRA adapter      checkpoints/.work-<mode>/  Trainer state
    reports/report.md, report.html    mask_tables/tfidf-<sha>.json  the vocabulary each mask table used
    promotion.json (manual choice)    labelling/.work-<shard>/      post_labels' finished chunks
    export/                           the promoted student merged (`opengrok export`, `opengrok serve`)
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


def _under_home(name: str, doc: str) -> property:
    return property(lambda layout: layout.home / name, doc=doc)


@dataclass(frozen=True)
class HomeLayout:
    """The paths under one OpenGrok home directory. Nothing here creates a directory."""

    home: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home))

    assets_dir = _under_home("assets", "resources.ParquetIOManager's base_dir: a Parquet file per asset (partition).")

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

    checkpoints_dir = _under_home("checkpoints", "The published LoRA adapters and the Trainer's work directories.")

    def checkpoint_dir(self, mask_mode: str) -> Path:
        """The published adapter of one mask mode (what ``lora_checkpoint[mode]``'s manifest points at)."""
        return self.checkpoints_dir / mask_mode

    def training_work_dir(self, mask_mode: str) -> Path:
        """The Trainer's resumable checkpoints of one mask mode (``training.job.TrainingJob.work_dir``)."""
        return self.checkpoints_dir / f".work-{mask_mode}"

    promotion_choice_path = _under_home(
        "promotion.json", "The adapter chosen by hand with `opengrok promote MODE` (absent: the promotion rule)."
    )
    student_export_dir = _under_home(
        "export", "`opengrok export`: the promoted student merged into its base, for plain transformers and serving."
    )
    labelling_dir = _under_home("labelling", "post_labels' work: the finished chunks of each shard's labelling.")

    def labelling_work_dir(self, shard: str) -> Path:
        """Finished chunks of one shard's labelling, so a killed run resumes without relabelling them."""
        return self.labelling_dir / f".work-{shard}"

    # Reports, vocabularies, the stores (one SQLite file each, written by different hands), logs, Dagster
    reports_dir = _under_home("reports", "report.md, report.html, the plots and results.parquet of eval_report.")
    tfidf_vocabulary_dir = _under_home("mask_tables", "tfidf-<sha>.json: the vocabulary each mask table used.")
    response_store_path = _under_home("responses.sqlite", "Every teacher response, committed as it arrives.")
    review_store_path = _under_home(
        "reviews.sqlite", "Beside the response store, in its own file: people write reviews, runs write responses."
    )
    eval_answers_path = _under_home("eval_answers.sqlite", "API models' evaluation answers, reused by reruns.")
    logs_dir = _under_home("logs", "The embedded teacher's server log, the run-failure log and the CLI's run logs.")
    dagster_home = _under_home("dagster_home", "The Dagster instance's directory when $DAGSTER_HOME is unset.")

    @property
    def teacher_server_log(self) -> Path:
        return self.logs_dir / "teacher-server.log"

    def cli_run_log(self, started: str) -> Path:
        """Dagster's console output (and the training subprocess's) of one ``opengrok`` command started at
        ``started`` (a UTC timestamp); the terminal shows progress and one line per failure."""
        return self.logs_dir / f"opengrok-{started}.log"

    @property
    def student_server_log(self) -> Path:
        """`opengrok serve`'s server log."""
        return self.logs_dir / "student-server.log"

    @property
    def run_failures_log(self) -> Path:
        """One JSON line per failed run (``sensors.run_failure_recorder``), for ``tail -f`` and log shippers."""
        return self.logs_dir / "run-failures.jsonl"
