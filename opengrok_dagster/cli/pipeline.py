"""The stages `opengrok run` drives, in pipeline order, each one job of opengrok_dagster/jobs.py run over its
partitions. The jobs carry the assets of each stage and the asset graph their order within it; what is left here
is a job's partitions, its progress line, and the rerun to print when it fails. The run stops at the first stage
that fails.

The asset modules take the active profile's sizes as their config defaults when they load: import this module
only once the profile is chosen (`opengrok run --profile`).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import pandas as pd
from dagster import DagsterInstance, Definitions, JobDefinition

from assets.collection import BUDGET_RUN_TAG, PromptsConfig
from opengrok_dagster.cli.console import RunConsole
from opengrok_dagster.cli.execution import Declined, execute
from opengrok_dagster.jobs import (
    STAGE_JOBS,
    collect_job,
    evaluate_job,
    fine_tune_job,
    label_posts_job,
    posts_job,
    prepare_job,
    promote_job,
)
from opengrok_dagster.partitions import collection_partition_key, post_shard_partitions
from opengrok_dagster.posts.sources import load_posts_catalogue
from opengrok_dagster.settings import home_layout, posts_catalogue_path


# The jobs whose assets a --config file may configure. Not posts: its shards are the posts catalogue's
# (OPENGROK_POSTS_CATALOGUE), which `opengrok run` lists itself, so a run config cannot point them elsewhere.
CONFIGURABLE_JOBS = [job for job in STAGE_JOBS if job is not posts_job]


@dataclass(frozen=True)
class Stage:
    """One step of `opengrok run`: ``job`` (a name in jobs.py) once for each of ``items()``, or once without a
    partition when ``items`` is None. ``label`` is its progress line (``{number}``, ``{count}``, ``{item}``);
    ``rerun`` says which items failed and how to resume (``{failed}``, ``{failed_csv}``); ``declined``, given
    the time the stage started, is the line that ends the run successfully when a failure was a decision (a
    blocking check), or None."""

    job: str
    label: str
    items: Callable[[], Sequence[str]] | None = None
    partition_key: Callable[[str], str] = lambda item: item
    rerun: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    declined: Callable[[float], str | None] | None = None


@dataclass
class StageRunner:
    """Runs stages on ``instance`` with the resolved ``jobs`` (by name) and the --config ``run_config``."""

    instance: DagsterInstance
    jobs: dict[str, JobDefinition]
    run_config: dict
    console: RunConsole | None = None

    def run(self, stages: Sequence[Stage]) -> bool:
        """Run ``stages`` in order until one fails (False) or declines (said, and the run ends there: True)."""
        for stage in stages:
            started = time.time()
            declined = partial(stage.declined, started) if stage.declined else None
            try:
                if not self._run_stage(stage, declined):
                    return False
            except Declined as decision:
                print(decision)
                return True
        return True

    def _run_stage(self, stage: Stage, declined: Callable[[], str | None] | None) -> bool:
        """Every partition of ``stage`` is run even after one fails, so the rerun line names all that did."""
        job = self.jobs[stage.job]
        if stage.items is None:
            return self._execute(job, stage.label, declined=declined)
        items = list(stage.items())
        failed = [
            item
            for number, item in enumerate(items, start=1)
            if not self._execute(
                job,
                stage.label.format(number=number, count=len(items), item=item),
                stage.partition_key(item),
                stage.tags,
                declined,
            )
        ]
        if failed:
            print(stage.rerun.format(failed=", ".join(failed), failed_csv=",".join(failed)), file=sys.stderr)
        return not failed

    def _execute(self, job: JobDefinition, label: str, partition_key=None, tags=None, declined=None) -> bool:
        return execute(self.instance, job, label, partition_key, self.run_config, tags, self.console, declined)


def resolve_jobs(defs: Definitions) -> dict[str, JobDefinition]:
    """The stage jobs of jobs.py as the code location ``defs`` resolves them, by name."""
    return {job.name: defs.resolve_job_def(job.name) for job in STAGE_JOBS}


def run_stages(
    instance: DagsterInstance, topics: list[str], round_key: str, modes: list[str], collect_only: bool
) -> list[Stage]:
    """`opengrok run`'s stages: the user's posts (the default grid annotates them), the teacher's answers for
    ``topics`` in ``round_key`` under one budget, then, unless ``collect_only``, the training data, one fine-tune
    per mask mode, the evaluation, the promotion and the labels of every posts shard."""
    annotates_posts = PromptsConfig.model_fields["annotation_share"].default > 0
    collect = Stage(
        collect_job.name,
        "[collect {number}/{count}] topic {item!r}, round " + round_key,
        items=lambda: topics,
        partition_key=lambda topic: collection_partition_key(topic, round_key),
        rerun="failed partitions: {failed}; rerun `opengrok run --topics {failed_csv}` (answered prompts are reused)",
        tags={BUDGET_RUN_TAG: uuid.uuid4().hex},  # OPENGROK_TEACHER_BUDGET_USD covers this whole command
    )
    stages = [posts_stage(instance), collect] if annotates_posts else [collect]
    if collect_only:
        return stages
    fine_tune = Stage(
        fine_tune_job.name,
        "[fine-tune] mask mode {item}",
        items=lambda: modes,
        rerun="fine-tune failed for mask mode(s) {failed}; rerun `opengrok run --modes {failed_csv}` "
        "(it resumes from the last checkpoint)",
    )
    return [
        *stages,
        Stage(prepare_job.name, "[filter + mask tables]"),
        fine_tune,
        Stage(evaluate_job.name, "[evaluate]"),
        *promote_and_label_stages(instance),
    ]


def posts_stage(instance: DagsterInstance) -> Stage:
    """Every shard of the posts catalogue, its partition added when it lacks one."""

    def shards() -> list[str]:
        keys = [shard.key for shard in load_posts_catalogue(posts_catalogue_path())]
        existing = set(instance.get_dynamic_partitions(post_shard_partitions.name))
        instance.add_dynamic_partitions(post_shard_partitions.name, [key for key in keys if key not in existing])
        return keys

    return Stage(
        posts_job.name,
        "[posts {number}/{count}] shard {item!r}",
        items=shards,
        rerun="posts shards failed: {failed}; fix them in the posts catalogue and rerun",
    )


def promote_and_label_stages(instance: DagsterInstance) -> list[Stage]:
    """Promote the adapter that earned it, then label (a sample of) every posts shard with it. Nothing promoted is
    said in one line and is not a failure of the run: there is then nothing to label."""
    return [
        Stage(promote_job.name, "[promote]", declined=_nothing_promoted),
        Stage(
            label_posts_job.name,
            "[label {number}/{count}] shard {item!r}",
            items=lambda: instance.get_dynamic_partitions(post_shard_partitions.name),
            rerun="labelling failed for shard(s) {failed}; rerun resumes after the finished chunks",
        ),
    ]


def _nothing_promoted(started: float) -> str | None:
    """Why promoted_student's blocking check stopped the promotion, if the record written since ``started`` says
    nothing was promoted; None for any other failure."""
    record_path = home_layout().asset_path("promoted_student")
    if not record_path.is_file() or record_path.stat().st_mtime < started:
        return None
    record = pd.read_parquet(record_path).iloc[0]
    if record["promoted"]:
        return None
    return f"[promote] {record['reason']}; no posts labelled (`opengrok promote MODE` chooses one by hand)"
