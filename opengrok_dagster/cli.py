"""`opengrok`: provision the offline model, manage topic partitions, and run the pipeline end to end."""

from __future__ import annotations

import argparse
import os
import sys
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


def cmd_run(args: argparse.Namespace) -> int:
    """Materialise every asset on the configured teacher: each topic partition of today's round."""
    from opengrok_dagster.offline.model import provision_offline_model
    from opengrok_dagster.settings import opengrok_home, teacher_is_remote

    instance = _instance()
    if not teacher_is_remote():
        provision_offline_model()
    cmd_topics(argparse.Namespace(action="sync"))
    from opengrok_dagster.definitions import defs
    from opengrok_dagster.partitions import collection_partition_key, topic_partitions

    round_key = args.round or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    topics = args.topics.split(",") if args.topics else instance.get_dynamic_partitions(topic_partitions.name)
    job = defs.resolve_job_def("collect_teacher_data")
    failed = []
    for number, topic in enumerate(topics, start=1):
        print(f"[{number}/{len(topics)}] collecting topic {topic!r}, round {round_key}", flush=True)
        result = job.execute_in_process(
            instance=instance, partition_key=collection_partition_key(topic, round_key), raise_on_error=False
        )
        if not result.success:
            failed.append(topic)
    if failed:
        print(f"failed partitions: {', '.join(failed)}; rerun `opengrok run --topics {','.join(failed)}` "
              "(answered prompts are reused)", file=sys.stderr)
        return 1
    print(f"done: artifacts under {opengrok_home() / 'assets'}; `make dev` opens the Dagster UI")
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
    run.set_defaults(handler=cmd_run)
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
