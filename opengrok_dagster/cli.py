"""`opengrok`: provision the offline model, manage topic partitions, and run the pipeline end to end."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from contextlib import closing, nullcontext
from datetime import UTC, datetime

from opengrok_dagster.cli_console import RunConsole, quiet_third_party_warnings
from opengrok_dagster.offline.server import TeacherServerError
from opengrok_dagster.offline_model import OfflineModelError


INSTANCE_LOCK_TIMEOUT_S = 300.0


def _instance():
    """The project's persistent Dagster instance (DAGSTER_HOME, default $OPENGROK_HOME/dagster_home), with the
    gpu and teacher pools (instance.py); `make dev` opens the same one.

    Creating it is serialised by a file lock: SQLite storages created by two processes at once each stamp
    their own alembic revision, and every later run fails with "more than one head present". Under the lock
    the instance is opened and each storage touched once, so that all of them exist before the lock is let go.
    """
    import fcntl

    from dagster import DagsterInstance

    from opengrok_dagster.instance import write_local_instance_config
    from opengrok_dagster.settings import dagster_home

    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    with open(home / ".opengrok-instance.lock", "w") as lock:
        deadline = time.monotonic() + INSTANCE_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ValueError(
                        f"another opengrok process has held {lock.name} for {INSTANCE_LOCK_TIMEOUT_S:.0f}s "
                        "while opening the Dagster instance; wait for it to finish and retry"
                    ) from None
                time.sleep(0.1)
        write_local_instance_config(home)  # local SQLite storage, the pools; no telemetry from an offline pipeline
        instance = DagsterInstance.get()
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions("topics")
        instance.all_instigator_state()
        return instance  # closing the file releases the lock


class _OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (an unknown choice, a missing argument) as one line and exit 2, like the rest."""

    def error(self, message: str):
        self.exit(2, f"opengrok: error: {message}; `{self.prog} --help` lists the arguments\n")


def _round_key(value: str | None) -> str:
    """``--round``: a YYYY-MM-DD day between the first round partition and today (UTC); default today."""
    from opengrok_dagster.partitions import ROUND_START_DATE

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


def _content_hash_prefix(value: str) -> str:
    """A review target: a content hash or its prefix, 16 hex digits at most (see filtering.dedup.content_hash)."""
    if not value or len(value) > 16 or any(c not in "0123456789abcdef" for c in value.lower()):
        raise ValueError(
            f"{value!r} is not a content hash: give the 16 hex digits (or a unique prefix) that "
            "`opengrok review list` prints first on each line"
        )
    return value


def cmd_provision(args: argparse.Namespace) -> int:
    from opengrok_dagster.offline_model import provision_offline_model

    print(f"offline model ready at {provision_offline_model(args.cache_dir, force=args.force)}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from opengrok_dagster.collect.topics import load_topic_catalogue
    from opengrok_dagster.partitions import topic_partitions
    from opengrok_dagster.settings import topic_catalogue_path
    from opengrok_dagster.tasks.keys import validate_topic_key

    instance = _instance()
    name = topic_partitions.name
    if args.action == "list":
        print("\n".join(instance.get_dynamic_partitions(name)) or "(no topics; run `opengrok topics sync`)")
    elif args.action == "add":
        keys = [validate_topic_key(key) for key in args.keys]
        instance.add_dynamic_partitions(name, keys)
        print(f"added {', '.join(keys)}")
    elif args.action == "remove":
        for key in args.keys:
            if not instance.has_dynamic_partition(name, key):
                raise SystemExit(f"topic {key!r} is not a partition; `opengrok topics list` shows them")
            instance.delete_dynamic_partition(name, key)
        print(f"removed {', '.join(args.keys)} (collected data and stored responses are kept)")
    else:  # sync
        existing = set(instance.get_dynamic_partitions(name))
        added = [t.key for t in load_topic_catalogue(topic_catalogue_path()) if t.key not in existing]
        instance.add_dynamic_partitions(name, added)
        print(f"added {', '.join(added)}" if added else "topic partitions already match the catalogue")
    return 0


# The CLI prints each stage's progress; Dagster's step-by-step DEBUG events stay in the event log (and the UI).
CONSOLE_AT_INFO = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _job_run_config(job, run_config: dict) -> dict:
    """The part of a run config file (``ops:``) for the assets of ``job``, plus the console log level."""
    nodes = set(job.graph.node_names())
    return CONSOLE_AT_INFO | {"ops": {op: value for op, value in run_config.get("ops", {}).items() if op in nodes}}


def _check_run_config(jobs, run_config: dict, source: str) -> None:
    """Refuse a run config file before anything runs: an asset no job has, or config its asset does not take."""
    from dagster import DagsterInvalidConfigError, validate_run_config

    covered = set().union(*(job.graph.node_names() for job in jobs))
    unknown = sorted(set(run_config.get("ops", {})) - covered)
    if unknown:
        raise ValueError(
            f"--config {source}: no asset named {', '.join(unknown)}; "
            f"configurable assets: {', '.join(sorted(covered))}"
        )
    for job in jobs:
        try:
            validate_run_config(job, _job_run_config(job, run_config))
        except DagsterInvalidConfigError as exc:
            reasons = "; ".join(error.message.split(". Expected")[0] for error in exc.errors)
            raise ValueError(
                f"--config {source}: {reasons}; fix the file (`dagster dev` shows each asset's config)"
            ) from None


_console: RunConsole | None = None  # the run log of the `opengrok run` running now; None: output as Dagster writes it


def _execute(instance, job, label: str, partition_key=None, run_config: dict | None = None, tags=None) -> bool:
    """Run ``job``; under `opengrok run`, with its console output in the command's run log: the terminal gets the
    progress line and, on failure, what went wrong in one line (a crash: its traceback) and the log's path."""
    from opengrok_dagster.instance import runner_tags

    started = time.monotonic()
    print(f"{label} ...", flush=True)
    from dagster import DagsterInvalidConfigError

    try:
        with _console.logging_to_file() if _console else nullcontext():
            result = job.execute_in_process(
                instance=instance,
                partition_key=partition_key,
                raise_on_error=False,
                tags=runner_tags() | (tags or {}),
                run_config=_job_run_config(job, run_config or {}),
            )
    except DagsterInvalidConfigError as exc:  # a setting from the environment Dagster cannot use: nothing ran
        raise ValueError(f"{label}: {'; '.join(_config_reason(error.message) for error in exc.errors)}") from None
    print(f"{label}: {'done' if result.success else 'FAILED'} in {time.monotonic() - started:.0f}s", flush=True)
    if not result.success and _console:
        _console.report_failure(result)
    return result.success


def _config_reason(message: str) -> str:
    """The sentence of a Dagster config error that says what is wrong (an unset EnvVar: which variable)."""
    cause = re.search(r"Error: ([^\n]+)", message)  # "...PostProcessingError: You have attempted to fetch ..."
    return (cause.group(1) if cause else message.strip().splitlines()[0]).strip()


def _profile_and_run_config(args: argparse.Namespace) -> dict:
    """Select the profile (before the definitions load: the assets' config defaults come from it), refuse one
    this machine cannot run, and read --config, whose max_length must agree over the profile's; its run config."""
    from opengrok_dagster.profiles import (
        LORA_CHECKPOINT,
        MASK_TABLES,
        PROFILE_VARIABLE,
        load_profile,
        load_run_config,
        require_devices,
        require_matching_max_length,
    )

    if args.profile:
        os.environ[PROFILE_VARIABLE] = args.profile
    profile = load_profile()
    require_devices(profile)
    run_config = load_run_config(args.config) if args.config else {}
    ops = run_config.get("ops", {})
    effective = {
        op: profile.op_config(op) | ops.get(op, {}).get("config", {}) for op in (MASK_TABLES, LORA_CHECKPOINT)
    }
    source = f"--config {args.config} over profile {profile.name}"
    require_matching_max_length(effective[MASK_TABLES], effective[LORA_CHECKPOINT], source)
    print(f"profile {profile.name}: {profile.description}" + (f"; run config {args.config}" if args.config else ""))
    return run_config


def _load_posts(instance, defs) -> bool:
    """Materialise every posts-catalogue shard (adding the partitions it lacks), for the annotation prompts."""
    from opengrok_dagster.jobs import posts_job
    from opengrok_dagster.partitions import post_shard_partitions
    from opengrok_dagster.posts.sources import load_posts_catalogue
    from opengrok_dagster.settings import posts_catalogue_path

    keys = [shard.key for shard in load_posts_catalogue(posts_catalogue_path())]
    existing = set(instance.get_dynamic_partitions(post_shard_partitions.name))
    instance.add_dynamic_partitions(post_shard_partitions.name, [key for key in keys if key not in existing])
    job = defs.resolve_job_def(posts_job.name)
    failed = [
        key
        for number, key in enumerate(keys, start=1)
        if not _execute(instance, job, f"[posts {number}/{len(keys)}] shard {key!r}", key)
    ]
    if failed:
        print(f"posts shards failed: {', '.join(failed)}; fix them in the posts catalogue and rerun", file=sys.stderr)
    return not failed


def cmd_run(args: argparse.Namespace) -> int:
    """Materialise every asset on the configured teacher: each topic partition of the round, then the
    filtered set and mask tables, one LoRA checkpoint per mask mode, and the evaluation report."""
    # Long on purpose: the whole command in the order it runs; every bad argument is refused before any work,
    # and each stage stops the run on failure with the rerun that resumes it.
    from opengrok_dagster.evaluation.report.render import REPORT_HTML, REPORT_MARKDOWN
    from opengrok_dagster.offline_model import provision_offline_model
    from opengrok_dagster.settings import home_layout, teacher_is_remote
    from opengrok_dagster.tasks.keys import validate_topic_key
    from opengrok_dagster.training import MASK_MODES

    modes = _comma_list("--modes", args.modes) if args.modes is not None else list(MASK_MODES)
    unknown = [mode for mode in modes if mode not in MASK_MODES]
    if unknown:
        raise ValueError(f"--modes: unknown mask mode(s) {', '.join(unknown)}; choose from {', '.join(MASK_MODES)}")
    round_key = _round_key(args.round)
    requested_topics = (
        [validate_topic_key(t) for t in _comma_list("--topics", args.topics)] if args.topics is not None else None
    )
    run_config = _profile_and_run_config(args)
    global _console
    _console = RunConsole(home_layout())  # one log per command, written from its first run on
    from assets.collection import BUDGET_RUN_TAG
    from opengrok_dagster.definitions import build_definitions
    from opengrok_dagster.instance import release_abandoned_runs
    from opengrok_dagster.jobs import (
        collect_job,
        evaluate_job,
        fine_tune_job,
        label_posts_job,
        prepare_job,
        promote_job,
    )
    from opengrok_dagster.partitions import collection_partition_key, topic_partitions

    defs = build_definitions(keep_teacher_server=True)  # one embedded server for every run below
    stage_jobs = (collect_job, prepare_job, fine_tune_job, evaluate_job, promote_job, label_posts_job)
    jobs = {job.name: defs.resolve_job_def(job.name) for job in stage_jobs}
    if args.config:
        _check_run_config(list(jobs.values()), run_config, args.config)  # before any work
    instance = _instance()
    for run_id in release_abandoned_runs(instance):
        print(f"run {run_id} of an earlier `opengrok run` was abandoned (killed): marked failed, its pool slots freed")
    if not teacher_is_remote() and not args.dry_run:
        provision_offline_model()
    cmd_topics(argparse.Namespace(action="sync"))

    known = instance.get_dynamic_partitions(topic_partitions.name)
    topics = requested_topics or known
    unknown = [topic for topic in topics if topic not in known]
    if unknown:
        raise ValueError(
            f"--topics: {', '.join(map(repr, unknown))} not a topic partition; add it with "
            f"`opengrok topics add {' '.join(unknown)}` or to the topic catalogue, then rerun"
        )
    if args.dry_run:
        return _dry_run(topics, round_key)
    _require_teacher_key()
    started = time.monotonic()
    from assets.collection import PromptsConfig

    if PromptsConfig.model_fields["annotation_share"].default > 0 and not _load_posts(instance, defs):
        return 1  # the default grid annotates the user's posts: they are read first
    collect = jobs[collect_job.name]
    one_budget = {BUDGET_RUN_TAG: uuid.uuid4().hex}  # OPENGROK_TEACHER_BUDGET_USD covers this whole command
    failed = [
        topic
        for number, topic in enumerate(topics, start=1)
        if not _execute(
            instance,
            collect,
            f"[collect {number}/{len(topics)}] topic {topic!r}, round {round_key}",
            collection_partition_key(topic, round_key),
            run_config,
            one_budget,
        )
    ]
    if failed:
        print(
            f"failed partitions: {', '.join(failed)}; rerun `opengrok run --topics {','.join(failed)}` "
            "(answered prompts are reused)",
            file=sys.stderr,
        )
        return 1
    if args.collect_only:
        return 0
    if not _execute(instance, jobs[prepare_job.name], "[filter + mask tables]", run_config=run_config):
        return 1
    fine_tune = jobs[fine_tune_job.name]
    failed = [
        mode for mode in modes if not _execute(instance, fine_tune, f"[fine-tune] mask mode {mode}", mode, run_config)
    ]
    if failed:
        print(
            f"fine-tune failed for mask mode(s) {', '.join(failed)}; rerun `opengrok run --modes {','.join(failed)}` "
            "(it resumes from the last checkpoint)",
            file=sys.stderr,
        )
        return 1
    if not _execute(instance, jobs[evaluate_job.name], "[evaluate]", run_config=run_config):
        return 1
    if not _promote_and_label(instance, jobs, run_config):
        return 1
    reports = home_layout().reports_dir
    print(
        f"done in {time.monotonic() - started:.0f}s: report at {reports / REPORT_HTML} (and {REPORT_MARKDOWN}); "
        "`make dev` opens the Dagster UI"
    )
    return 0


def _require_teacher_key() -> None:
    """A remote teacher's key variable must be set before any run starts (a dry run sends nothing: it needs none)."""
    from opengrok_dagster.settings import teacher_api_key_variable, teacher_is_remote

    variable = teacher_api_key_variable()
    if teacher_is_remote() and not os.environ.get(variable):
        raise ValueError(
            f"OPENGROK_TEACHER_BASE_URL is set but {variable}, which holds the teacher's API key, is not: export it "
            "(any value for an endpoint without keys), or name the variable that holds it in "
            "OPENGROK_TEACHER_API_KEY_VAR"
        )


def _promote_and_label(instance, jobs: dict, run_config: dict) -> bool:
    """Promote the adapter that earned it, then label (a sample of) every posts shard with it. Nothing promoted is
    said in one line and is not a failure of the run: there is then nothing to label."""
    import pandas as pd

    from opengrok_dagster.jobs import label_posts_job, promote_job
    from opengrok_dagster.partitions import post_shard_partitions
    from opengrok_dagster.settings import home_layout

    started = time.time()
    promoted = _execute(instance, jobs[promote_job.name], "[promote]", run_config=run_config)
    record_path = home_layout().asset_path("promoted_student")
    if not promoted and record_path.is_file() and record_path.stat().st_mtime >= started:
        record = pd.read_parquet(record_path).iloc[0]
        if not record["promoted"]:  # the blocking check stopped the run: say why, label nothing
            print(f"[promote] {record['reason']}; no posts labelled (`opengrok promote MODE` chooses one by hand)")
            return True
    if not promoted:
        return False
    shards = instance.get_dynamic_partitions(post_shard_partitions.name)
    failed = [
        shard
        for number, shard in enumerate(shards, start=1)
        if not _execute(
            instance, jobs[label_posts_job.name], f"[label {number}/{len(shards)}] shard {shard!r}", shard, run_config
        )
    ]
    if failed:
        print(
            f"labelling failed for shard(s) {', '.join(failed)}; rerun resumes after the finished chunks",
            file=sys.stderr,
        )
    return not failed


def _dry_run(topics: list[str], round_key: str) -> int:
    """Print what collecting ``topics`` in ``round_key`` would send and cost, with the default prompt grid and
    the configured teacher's max_tokens and prices; sends nothing and starts no server."""
    from opengrok_dagster.collect.plan import estimate_collection, format_estimates, round_prompt_grid
    from opengrok_dagster.collect.prompts import PromptGridConfig
    from opengrok_dagster.collect.topics import find_topic
    from opengrok_dagster.definitions import build_teacher
    from opengrok_dagster.settings import opengrok_home, teacher_is_remote, topic_catalogue_path
    from resources import OpenGrokPaths

    if teacher_is_remote() and not os.environ.get("OPENGROK_TEACHER_MODEL"):
        raise ValueError(
            "OPENGROK_TEACHER_BASE_URL is set but OPENGROK_TEACHER_MODEL is not: set the model id "
            "(e.g. grok-4), or unset OPENGROK_TEACHER_BASE_URL for the embedded teacher"
        )
    paths = OpenGrokPaths(home=str(opengrok_home()), topic_catalogue=str(topic_catalogue_path()))
    catalogue = paths.topics()
    estimates = []
    # Resolves the EnvVar settings; the embedded server starts only on a request, and none is made.
    with (
        build_teacher(with_key=False).process_config_and_initialize_cm() as teacher,
        closing(paths.response_store()) as store,
    ):
        count_tokens, tokenizer = teacher.token_counter()
        for topic in topics:
            rows, _ = round_prompt_grid(
                find_topic(catalogue, topic), PromptGridConfig(), round_key, paths.layout.prompt_feedback_path
            )
            key = teacher.response_key(round_key)
            answered = store.responses.answered(key, (row["prompt_id"] for row in rows))
            estimates.append(
                estimate_collection(
                    topic,
                    rows,
                    answered,
                    count_tokens,
                    teacher.max_tokens,
                    teacher.prices(),
                    tokenizer,
                    store.responses.completion_history(key.teacher_model, key.sampling_key),
                )
            )
    teacher_name = teacher.response_key(round_key).teacher_model
    print(
        f"dry run: round {round_key}, teacher {teacher_name} ({teacher.mode}), max_tokens {teacher.max_tokens}, "
        f"USD per million tokens {teacher.prompt_price_per_million} prompt / {teacher.completion_price_per_million} "
        f"completion; prompt tokens by {tokenizer}; expected completion from "
        f"{estimates[0].completion_basis if estimates else 'max_tokens'}; nothing sent"
    )
    print(format_estimates(estimates))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """The manual review queue: list, accept, reject, export and import decisions keyed by content hash."""
    from opengrok_dagster.filtering import review
    from opengrok_dagster.settings import home_layout

    if args.action in ("accept", "reject"):
        for target in args.targets:
            _content_hash_prefix(target)
    layout = home_layout()
    filtered = review.read_filtered(layout.home)
    reviewer = args.reviewer or os.environ.get("USER") or None
    with review.ReviewStore(layout.review_store_path) as store:
        if args.action == "list":
            queue = review.review_queue(filtered, store.latest_decisions())
            if queue.empty:
                print("the review queue is empty")
            for row in queue.head(args.limit).itertuples():
                print(f"{row.content_hash}  {row.topic}/{row.template_id}  [{row.reasons}]  {row.response[:100]!r}")
            if len(queue) > args.limit:
                print(f"... {len(queue) - args.limit} more; `opengrok review export queue.csv` writes them all")
        elif args.action in ("accept", "reject"):
            if not args.targets:
                raise ValueError(
                    f"`opengrok review {args.action}` needs at least one content hash (or prefix) from `opengrok review list`"
                )
            recorded = store.record(
                review.resolve_hashes(filtered, args.targets),
                review.ACCEPT if args.action == "accept" else review.REJECT,
                args.note,
                reviewer,
            )
            print(
                f"recorded {recorded} {args.action} decision(s); the review sensor re-materialises filtered_responses"
            )
        elif args.action == "export":
            if len(args.targets) != 1:
                raise ValueError("`opengrok review export` needs one output file (.csv or .parquet)")
            queue = review.review_queue(filtered, store.latest_decisions())
            review.export_queue(queue, args.targets[0])
            print(
                f"exported {len(queue)} queued response(s) to {args.targets[0]}; fill in decision (accept/reject) and note, then import it"
            )
        else:  # import
            if len(args.targets) != 1:
                raise ValueError("`opengrok review import` needs one file written by `opengrok review export`")
            rows = review.read_decisions_file(args.targets[0])
            hashes = review.resolve_hashes(filtered, [content_hash for content_hash, _, _ in rows])
            for content_hash, (_, decision, note) in zip(hashes, rows):
                store.record([content_hash], decision, note, reviewer)
            print(f"imported {len(rows)} decision(s) from {args.targets[0]}")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """Print the provenance chain of a training example, or of a checkpoint (mask mode or adapter directory)."""
    from opengrok_dagster.lineage import checkpoint_lineage, example_lineage, format_lineage, lineage_json
    from opengrok_dagster.settings import opengrok_home
    from opengrok_dagster.training import MASK_MODES

    home = opengrok_home()
    is_checkpoint = args.target in MASK_MODES or os.path.isdir(args.target)
    if not is_checkpoint and (
        os.sep in args.target or len(args.target) != 16 or any(c not in "0123456789abcdef" for c in args.target)
    ):
        raise ValueError(
            f"no example {args.target!r}: a lineage target is an example_id (16 hex digits, from "
            f"filtered_responses), a mask mode ({', '.join(MASK_MODES)}) or an adapter directory"
        )
    steps = checkpoint_lineage(home, args.target) if is_checkpoint else example_lineage(home, args.target)
    print(lineage_json(steps) if args.json else format_lineage(steps))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Choose the adapter that labels posts by hand (recorded as manual), or return the choice to the rule."""
    from opengrok_dagster.labelling.promotion import write_manual_choice
    from opengrok_dagster.settings import home_layout

    write_manual_choice(home_layout().promotion_choice_path, None if args.mode == "auto" else args.mode)
    chosen = "the promotion rule decides" if args.mode == "auto" else f"lora:{args.mode} is chosen by hand"
    print(f"{chosen}; materialise promoted_student (then post_labels) for it to take effect")
    return 0


def _student_model() -> str:
    """The student, as the code location resolves it: $OPENGROK_STUDENT_MODEL, else the profile's, else the
    provisioned offline model."""
    from opengrok_dagster.offline_model import check_offline_model, offline_model_dir
    from opengrok_dagster.profiles import active_profile

    chosen = os.environ.get("OPENGROK_STUDENT_MODEL") or active_profile().student_model
    return chosen or str(check_offline_model(offline_model_dir()))


def cmd_export(args: argparse.Namespace) -> int:
    """Write the promoted student merged into its base (safetensors, tokenizer, card) for plain transformers."""
    from opengrok_dagster.offline.export import export_merged, promoted_adapter
    from opengrok_dagster.settings import home_layout

    layout = home_layout()
    promoted = promoted_adapter(layout.asset_path("promoted_student"))
    target = export_merged(promoted, _student_model(), layout.student_export_dir)
    print(f"lora:{promoted['mask_mode']} merged into its base and written to {target}; `opengrok serve` serves it")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the export on an OpenAI-compatible endpoint until interrupted."""
    from opengrok_dagster.offline.export import export_server
    from opengrok_dagster.settings import home_layout

    layout = home_layout()
    server = export_server(layout.student_export_dir, args.port, layout.student_server_log)
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    with server:
        print(
            f"serving {server.model_id} at {server.base_url} (model: {server.model_id}); Ctrl-C stops it", flush=True
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="opengrok", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    provision = commands.add_parser("provision", help="build the offline SmolLM2 checkpoint (once)")
    provision.add_argument("--cache-dir", default=None, help="default $OPENGROK_CACHE_DIR or ~/.cache/opengrok")
    provision.add_argument("--force", action="store_true", help="rebuild even if a complete copy exists")
    provision.set_defaults(handler=cmd_provision)

    topics = commands.add_parser("topics", help="list, add, remove or sync topic partitions")
    topics.add_argument("action", choices=["list", "add", "remove", "sync"])
    topics.add_argument("keys", nargs="*", help="topic keys for add/remove")
    topics.set_defaults(handler=cmd_topics)

    run = commands.add_parser("run", help="materialise the whole pipeline end to end")
    run.add_argument("--round", default=None, help="collection round YYYY-MM-DD (default: today, UTC)")
    run.add_argument("--topics", default=None, help="comma-separated topic keys (default: all partitions)")
    run.add_argument(
        "--modes", default=None, help="comma-separated mask modes to fine-tune (default: none,paper,hard,soft)"
    )
    run.add_argument("--collect-only", action="store_true", help="stop after collecting the teacher's responses")
    run.add_argument(
        "--profile",
        default=None,
        help="profile in opengrok_dagster/config/profiles/ (cpu-demo, gpu) or a profile .yaml "
        "path (default: $OPENGROK_PROFILE, else cpu-demo)",
    )
    run.add_argument(
        "--config", default=None, help="a Dagster run config YAML (ops: <asset>: config: ...) applied over the profile"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the requests, estimated tokens and USD per topic and in total; send nothing",
    )
    run.set_defaults(handler=cmd_run)

    review_parser = commands.add_parser("review", help="manual review of borderline filtered responses")
    review_parser.add_argument("action", choices=["list", "accept", "reject", "export", "import"])
    review_parser.add_argument(
        "targets",
        nargs="*",
        help="content hashes (or unique prefixes) for accept/reject; a .csv/.parquet file for export/import",
    )
    review_parser.add_argument("--note", default=None, help="a note stored with accept/reject decisions")
    review_parser.add_argument("--reviewer", default=None, help="who decided (default: $USER)")
    review_parser.add_argument("--limit", type=int, default=20, help="how many queued responses `list` prints")
    review_parser.set_defaults(handler=cmd_review)

    lineage = commands.add_parser("lineage", help="provenance of a training example or a LoRA checkpoint")
    lineage.add_argument(
        "target",
        help="an example_id from filtered_responses, a mask mode (none/paper/hard/soft) or an adapter directory",
    )
    lineage.add_argument(
        "--json", action="store_true", help="the full record as JSON (every example id); the text form shows counts"
    )
    lineage.set_defaults(handler=cmd_lineage)

    from opengrok_dagster.training import MASK_MODES

    promote = commands.add_parser("promote", help="choose the adapter that labels posts, or `auto` for the rule")
    promote.add_argument("mode", choices=[*MASK_MODES, "auto"], help="a mask mode, or auto (the promotion rule)")
    promote.set_defaults(handler=cmd_promote)

    export = commands.add_parser("export", help="write the promoted student merged into its base (safetensors)")
    export.set_defaults(handler=cmd_export)
    serve = commands.add_parser("serve", help="serve the exported student on an OpenAI-compatible endpoint")
    serve.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
    serve.set_defaults(handler=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    global _console
    quiet_third_party_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (
        ValueError,
        OfflineModelError,
        TeacherServerError,
    ) as exc:  # bad input: say what and how to fix it, without a traceback
        print(f"opengrok: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _console = None  # the command's run log ends with it


if __name__ == "__main__":
    sys.exit(main())
