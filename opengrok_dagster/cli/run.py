"""`opengrok run`: every asset on the configured teacher through the asset graph's jobs (cli/pipeline.py), or with
--dry-run what collecting would send and cost. Every bad argument is refused in one line before any work."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from dagster import DagsterInstance

from opengrok_dagster.cli.console import RunConsole
from opengrok_dagster.cli.execution import check_run_config
from opengrok_dagster.cli.local_instance import open_instance
from opengrok_dagster.cli.provision import sync_topics
from opengrok_dagster.evaluation.report.render import REPORT_HTML, REPORT_MARKDOWN
from opengrok_dagster.instance import release_abandoned_runs
from opengrok_dagster.offline_model import provision_offline_model
from opengrok_dagster.partitions import ROUND_START_DATE, topic_partitions
from opengrok_dagster.profiles import (
    LORA_CHECKPOINT,
    MASK_TABLES,
    PROFILE_VARIABLE,
    Profile,
    load_profile,
    load_run_config,
    require_devices,
    require_matching_max_length,
)
from opengrok_dagster.settings import home_layout, teacher_api_key_variable, teacher_is_remote
from opengrok_dagster.tasks.keys import validate_topic_key
from opengrok_dagster.training import MASK_MODES


@dataclass(frozen=True)
class RunRequest:
    """The arguments of `opengrok run`, checked."""

    round_key: str
    topics: list[str] | None  # None: every topic partition
    modes: list[str]
    run_config: dict  # --config's, checked against the jobs once they are resolved


def cmd_run(args: argparse.Namespace) -> int:
    """Materialise every asset on the configured teacher: each topic partition of the round, then the
    filtered set and mask tables, one LoRA checkpoint per mask mode, and the evaluation report."""
    request = _checked_request(args)
    console = RunConsole(home_layout())  # one log per command, written from its first run on
    # The asset modules take the profile's sizes as their config defaults when they load: imported once
    # _checked_request has chosen the profile.
    from opengrok_dagster.cli.pipeline import CONFIGURABLE_JOBS, StageRunner, resolve_jobs, run_stages
    from opengrok_dagster.definitions import build_definitions

    jobs = resolve_jobs(build_definitions(keep_teacher_server=True))  # one embedded server for every run below
    if args.config:
        check_run_config((jobs[job.name] for job in CONFIGURABLE_JOBS), request.run_config, args.config)
    instance = open_instance()
    for run_id in release_abandoned_runs(instance):
        print(f"run {run_id} of an earlier `opengrok run` was abandoned (killed): marked failed, its pool slots freed")
    if not teacher_is_remote() and not args.dry_run:
        provision_offline_model()
    sync_topics(instance)
    topics = _topic_partitions(instance, request.topics)
    if args.dry_run:
        from opengrok_dagster.cli.dry_run import dry_run  # builds the teacher resource of the profile's definitions

        return dry_run(topics, request.round_key)
    _require_teacher_key()
    started = time.monotonic()
    stages = run_stages(instance, topics, request.round_key, request.modes, args.collect_only)
    if not StageRunner(instance, jobs, request.run_config, console).run(stages):
        return 1
    if not args.collect_only:
        reports = home_layout().reports_dir
        print(
            f"done in {time.monotonic() - started:.0f}s: report at {reports / REPORT_HTML} (and {REPORT_MARKDOWN}); "
            "`make dev` opens the Dagster UI"
        )
    return 0


def _checked_request(args: argparse.Namespace) -> RunRequest:
    """The arguments, each refused in one line when it is wrong; then the profile, chosen and checked."""
    asked = _comma_list("--modes", args.modes) if args.modes is not None else None
    _check_modes(asked or [], "--modes")
    round_key = _round_key(args.round)
    topics = [validate_topic_key(t) for t in _comma_list("--topics", args.topics)] if args.topics is not None else None
    profile, run_config = _profile_and_run_config(args)
    return RunRequest(round_key, topics, asked or profile.run_modes or list(MASK_MODES), run_config)


def _check_modes(modes: list[str], setting: str) -> None:
    unknown = [mode for mode in modes if mode not in MASK_MODES]
    if unknown:
        raise ValueError(f"{setting}: unknown mask mode(s) {', '.join(unknown)}; choose from {', '.join(MASK_MODES)}")


def _round_key(value: str | None) -> str:
    """``--round``: a YYYY-MM-DD day between the first round partition and today (UTC); default today."""
    today = datetime.now(UTC).date()
    if value is None:
        return today.isoformat()
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise ValueError(
            f"--round {value!r} is not a date: give the round as YYYY-MM-DD, e.g. {today.isoformat()}, "
            "or leave it out for today (UTC)"
        ) from None
    if day.isoformat() != value:  # strptime accepts 2026-1-5
        raise ValueError(f"--round {value!r}: write the date as YYYY-MM-DD ({day.isoformat()})")
    if day > today:
        raise ValueError(
            f"--round {value} is in the future (today is {today.isoformat()} UTC); collect today's or an earlier round"
        )
    if day.isoformat() < ROUND_START_DATE:
        raise ValueError(f"--round {value} is before the first round partition ({ROUND_START_DATE})")
    return value


def _comma_list(flag: str, value: str) -> list[str]:
    """The items of a comma-separated argument, in order, once each; an empty item is an error."""
    items = [item.strip() for item in value.split(",")]
    if not all(items):
        raise ValueError(
            f"{flag} {value!r} has an empty item: give comma-separated names without spaces or "
            "trailing commas, e.g. football,climate"
        )
    return list(dict.fromkeys(items))


def _profile_and_run_config(args: argparse.Namespace) -> tuple[Profile, dict]:
    """Select the profile (before the definitions load: the assets' config defaults come from it), refuse one
    this machine cannot run, and read --config, whose max_length must agree over the profile's; the profile and
    the run config."""
    if args.profile:
        os.environ[PROFILE_VARIABLE] = args.profile
    profile = load_profile()
    require_devices(profile)
    _check_modes(profile.run_modes or [], f"{profile.source}: run_modes")
    run_config = load_run_config(args.config) if args.config else {}
    ops = run_config.get("ops", {})
    effective = {
        op: profile.op_config(op) | ops.get(op, {}).get("config", {}) for op in (MASK_TABLES, LORA_CHECKPOINT)
    }
    source = f"--config {args.config} over profile {profile.name}"
    require_matching_max_length(effective[MASK_TABLES], effective[LORA_CHECKPOINT], source)
    print(f"profile {profile.name}: {profile.description}" + (f"; run config {args.config}" if args.config else ""))
    return profile, run_config


def _topic_partitions(instance: DagsterInstance, requested: list[str] | None) -> list[str]:
    """The topics to collect: those requested, each of which must be a partition, or every partition."""
    known = instance.get_dynamic_partitions(topic_partitions.name)
    topics = requested or known
    unknown = [topic for topic in topics if topic not in known]
    if unknown:
        raise ValueError(
            f"--topics: {', '.join(map(repr, unknown))} not a topic partition; add it with "
            f"`opengrok topics add {' '.join(unknown)}` or to the topic catalogue, then rerun"
        )
    return topics


def _require_teacher_key() -> None:
    """A remote teacher's key variable must be set before any run starts (a dry run sends nothing: it needs none)."""
    variable = teacher_api_key_variable()
    if teacher_is_remote() and not os.environ.get(variable):
        raise ValueError(
            f"OPENGROK_TEACHER_BASE_URL is set but {variable}, which holds the teacher's API key, is not: export it "
            "(any value for an endpoint without keys), or name the variable that holds it in "
            "OPENGROK_TEACHER_API_KEY_VAR"
        )
