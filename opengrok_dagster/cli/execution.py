"""One job of the code location run in this process, as `opengrok run` runs each: its progress line on the
terminal and, under a RunConsole, Dagster's output in the command's run log; and the run config of a --config
file cut to each job."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

from dagster import DagsterInstance, DagsterInvalidConfigError, JobDefinition, validate_run_config

from opengrok_dagster.cli.console import RunConsole
from opengrok_dagster.instance import runner_tags


# The CLI prints each stage's progress; Dagster's step-by-step DEBUG events stay in the event log (and the UI).
CONSOLE_AT_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


class Declined(Exception):
    """A run stopped by a decision (a blocking check that said no), not by a fault; the message says why."""


def job_run_config(job: JobDefinition, run_config: dict) -> dict:
    """The part of a run config file (``ops:``) for the assets of ``job``, plus the console log level."""
    nodes = set(job.graph.node_names())
    return CONSOLE_AT_INFO | {"ops": {op: value for op, value in run_config.get("ops", {}).items() if op in nodes}}


def check_run_config(jobs: Iterable[JobDefinition], run_config: dict, source: str) -> None:
    """Refuse a run config file before anything runs: an asset no job has, or config its asset does not take."""
    jobs = list(jobs)
    covered = set().union(*(job.graph.node_names() for job in jobs))
    unknown = sorted(set(run_config.get("ops", {})) - covered)
    if unknown:
        raise ValueError(
            f"--config {source}: no asset named {', '.join(unknown)}; "
            f"configurable assets: {', '.join(sorted(covered))}"
        )
    for job in jobs:
        try:
            validate_run_config(job, job_run_config(job, run_config))
        except DagsterInvalidConfigError as exc:
            reasons = "; ".join(error.message.split(". Expected")[0] for error in exc.errors)
            raise ValueError(
                f"--config {source}: {reasons}; fix the file (`dagster dev` shows each asset's config)"
            ) from None


def execute(
    instance: DagsterInstance,
    job: JobDefinition,
    label: str,
    partition_key: str | None = None,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    console: RunConsole | None = None,
    declined: Callable[[], str | None] | None = None,
) -> bool:
    """Run ``job`` and say so in progress lines; with a ``console`` (`opengrok run`), its output goes to the
    command's run log and a failure is said in one line (a crash: its traceback) with the log's path. A failure
    ``declined`` explains (its reason, else None) is no error: :class:`Declined` carries the reason instead."""
    started = time.monotonic()
    print(f"{label} ...", flush=True)
    try:
        with console.logging_to_file() if console else nullcontext():
            result = job.execute_in_process(
                instance=instance,
                partition_key=partition_key,
                raise_on_error=False,
                tags=runner_tags() | (tags or {}),
                run_config=job_run_config(job, run_config or {}),
            )
    except DagsterInvalidConfigError as exc:  # a setting from the environment Dagster cannot use: nothing ran
        raise ValueError(f"{label}: {'; '.join(_config_reason(error.message) for error in exc.errors)}") from None
    seconds = time.monotonic() - started
    reason = declined() if declined is not None and not result.success else None
    if reason is not None:
        print(f"{label}: stopped by a blocking check in {seconds:.0f}s", flush=True)
        raise Declined(reason)
    print(f"{label}: {'done' if result.success else 'FAILED'} in {seconds:.0f}s", flush=True)
    if not result.success and console:
        console.report_failure(result)
    return result.success


def _config_reason(message: str) -> str:
    """The sentence of a Dagster config error that says what is wrong (an unset EnvVar: which variable)."""
    cause = re.search(r"Error: ([^\n]+)", message)  # "...PostProcessingError: You have attempted to fetch ..."
    return (cause.group(1) if cause else message.strip().splitlines()[0]).strip()
