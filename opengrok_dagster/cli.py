"""`opengrok`: provision the offline model, manage topic partitions, and run the pipeline end to end."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone

from opengrok_dagster.offline.model import OfflineModelError


def _instance():
    """The project's persistent Dagster instance (DAGSTER_HOME, default $OPENGROK_HOME/dagster_home)."""
    from dagster import DagsterInstance

    from opengrok_dagster.settings import dagster_home

    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():  # local SQLite storage; no telemetry from an offline pipeline
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def cmd_provision(args: argparse.Namespace) -> int:
    from opengrok_dagster.offline.model import provision_offline_model

    print(f"offline model ready at {provision_offline_model(args.cache_dir, force=args.force)}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from opengrok_dagster.collect.topics import load_topic_catalogue, validate_topic_key
    from opengrok_dagster.partitions import topic_partitions
    from opengrok_dagster.settings import topic_catalogue_path

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


def _execute(instance, job, label: str, partition_key=None) -> bool:
    started = time.monotonic()
    print(f"{label} ...", flush=True)
    result = job.execute_in_process(
        instance=instance, partition_key=partition_key, raise_on_error=False, run_config=CONSOLE_AT_INFO
    )
    print(f"{label}: {'done' if result.success else 'FAILED'} in {time.monotonic() - started:.0f}s", flush=True)
    return result.success


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
    failed = [key for number, key in enumerate(keys, start=1)
              if not _execute(instance, job, f"[posts {number}/{len(keys)}] shard {key!r}", key)]
    if failed:
        print(f"posts shards failed: {', '.join(failed)}; fix them in the posts catalogue and rerun", file=sys.stderr)
    return not failed


def cmd_run(args: argparse.Namespace) -> int:
    """Materialise every asset on the configured teacher: each topic partition of the round, then the
    filtered set and mask tables, one LoRA checkpoint per mask mode, and the evaluation report."""
    from opengrok_dagster.offline.model import provision_offline_model
    from opengrok_dagster.partitions import MASK_MODES
    from opengrok_dagster.settings import opengrok_home, teacher_is_remote

    modes = args.modes.split(",") if args.modes else list(MASK_MODES)
    unknown = sorted(set(modes) - set(MASK_MODES))
    if unknown:
        raise ValueError(f"--modes: unknown mask mode(s) {', '.join(unknown)}; choose from {', '.join(MASK_MODES)}")
    instance = _instance()
    if not teacher_is_remote():
        provision_offline_model()
    cmd_topics(argparse.Namespace(action="sync"))
    from opengrok_dagster.definitions import build_definitions
    from opengrok_dagster.jobs import collect_job, evaluate_job, fine_tune_job, prepare_job
    from opengrok_dagster.partitions import collection_partition_key, topic_partitions

    round_key = args.round or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    known = instance.get_dynamic_partitions(topic_partitions.name)
    topics = args.topics.split(",") if args.topics else known
    unknown = [topic for topic in topics if topic not in known]
    if unknown:
        raise ValueError(f"--topics: {', '.join(map(repr, unknown))} not a topic partition; add it with "
                         f"`opengrok topics add {' '.join(unknown)}` or to the topic catalogue, then rerun")
    started = time.monotonic()
    defs = build_definitions(keep_teacher_server=True)  # one embedded server for every run below
    from assets.collection import PromptsConfig

    if PromptsConfig.model_fields["annotation_share"].default > 0 and not _load_posts(instance, defs):
        return 1  # the default grid annotates the user's posts: they are read first
    collect = defs.resolve_job_def(collect_job.name)
    failed = [
        topic
        for number, topic in enumerate(topics, start=1)
        if not _execute(instance, collect, f"[collect {number}/{len(topics)}] topic {topic!r}, round {round_key}",
                        collection_partition_key(topic, round_key))
    ]
    if failed:
        print(f"failed partitions: {', '.join(failed)}; rerun `opengrok run --topics {','.join(failed)}` "
              "(answered prompts are reused)", file=sys.stderr)
        return 1
    if args.collect_only:
        return 0
    if not _execute(instance, defs.resolve_job_def(prepare_job.name), "[filter + mask tables]"):
        return 1
    fine_tune = defs.resolve_job_def(fine_tune_job.name)
    failed = [mode for mode in modes if not _execute(instance, fine_tune, f"[fine-tune] mask mode {mode}", mode)]
    if failed:
        print(f"fine-tune failed for mask mode(s) {', '.join(failed)}; rerun `opengrok run --modes {','.join(failed)}` "
              "(it resumes from the last checkpoint)", file=sys.stderr)
        return 1
    if not _execute(instance, defs.resolve_job_def(evaluate_job.name), "[evaluate]"):
        return 1
    reports = opengrok_home() / "reports"
    print(f"done in {time.monotonic() - started:.0f}s: report at {reports / 'report.html'} (and report.md); "
          "`make dev` opens the Dagster UI")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """The manual review queue: list, accept, reject, export and import decisions keyed by content hash."""
    from opengrok_dagster.filtering import review
    from opengrok_dagster.settings import opengrok_home

    home = opengrok_home()
    filtered = review.read_filtered(home)
    reviewer = args.reviewer or os.environ.get("USER") or None
    with review.ReviewStore(review.review_store_path(home)) as store:
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
                raise ValueError(f"`opengrok review {args.action}` needs at least one content hash (or prefix) from `opengrok review list`")
            recorded = store.record(review.resolve_hashes(filtered, args.targets), review.ACCEPT if args.action == "accept" else review.REJECT, args.note, reviewer)
            print(f"recorded {recorded} {args.action} decision(s); the review sensor re-materialises filtered_responses")
        elif args.action == "export":
            if len(args.targets) != 1:
                raise ValueError("`opengrok review export` needs one output file (.csv or .parquet)")
            queue = review.review_queue(filtered, store.latest_decisions())
            review.export_queue(queue, args.targets[0])
            print(f"exported {len(queue)} queued response(s) to {args.targets[0]}; fill in decision (accept/reject) and note, then import it")
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
    from opengrok_dagster.lineage import checkpoint_lineage, example_lineage, format_lineage
    from opengrok_dagster.partitions import MASK_MODES
    from opengrok_dagster.settings import opengrok_home

    home = opengrok_home()
    is_checkpoint = args.target in MASK_MODES or os.path.isdir(args.target)
    steps = checkpoint_lineage(home, args.target) if is_checkpoint else example_lineage(home, args.target)
    print(format_lineage(steps))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opengrok", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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
    run.add_argument("--modes", default=None, help="comma-separated mask modes to fine-tune (default: none,paper,hard,soft)")
    run.add_argument("--collect-only", action="store_true", help="stop after collecting the teacher's responses")
    run.set_defaults(handler=cmd_run)

    review_parser = commands.add_parser("review", help="manual review of borderline filtered responses")
    review_parser.add_argument("action", choices=["list", "accept", "reject", "export", "import"])
    review_parser.add_argument("targets", nargs="*", help="content hashes (or unique prefixes) for accept/reject; a .csv/.parquet file for export/import")
    review_parser.add_argument("--note", default=None, help="a note stored with accept/reject decisions")
    review_parser.add_argument("--reviewer", default=None, help="who decided (default: $USER)")
    review_parser.add_argument("--limit", type=int, default=20, help="how many queued responses `list` prints")
    review_parser.set_defaults(handler=cmd_review)

    lineage = commands.add_parser("lineage", help="provenance of a training example or a LoRA checkpoint")
    lineage.add_argument("target", help="an example_id from filtered_responses, a mask mode (none/paper/hard/soft) or an adapter directory")
    lineage.set_defaults(handler=cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OfflineModelError) as exc:  # bad input: say what and how to fix it, without a traceback
        print(f"opengrok: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
