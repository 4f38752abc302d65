"""`opengrok provision`, `opengrok topics` and `opengrok pools`: what a run needs in place, the offline model, the
topic partitions and the concurrency pools' limits."""

from __future__ import annotations

import argparse

from dagster import DagsterInstance

from opengrok_dagster.cli.local_instance import open_instance
from opengrok_dagster.collect.topics import load_topic_catalogue
from opengrok_dagster.instance import OPENGROK_POOLS
from opengrok_dagster.offline_model import provision_offline_model
from opengrok_dagster.partitions import topic_partitions
from opengrok_dagster.settings import topic_catalogue_path
from opengrok_dagster.tasks.keys import validate_topic_key


def cmd_provision(args: argparse.Namespace) -> int:
    print(f"offline model ready at {provision_offline_model(args.cache_dir, force=args.force)}")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    instance = open_instance()
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
    else:
        sync_topics(instance)
    return 0


def sync_topics(instance: DagsterInstance) -> None:
    """Add a partition for each topic of the catalogue that has none (`opengrok topics sync`, and every run)."""
    existing = set(instance.get_dynamic_partitions(topic_partitions.name))
    added = [t.key for t in load_topic_catalogue(topic_catalogue_path()) if t.key not in existing]
    instance.add_dynamic_partitions(topic_partitions.name, added)
    print(f"added {', '.join(added)}" if added else "topic partitions already match the catalogue")


def cmd_pools(args: argparse.Namespace) -> int:
    """The pools' limits, set where missing (``open_instance`` does that): the deployment's daemon runs it first."""
    storage = open_instance().event_log_storage
    limited = storage.get_concurrency_keys()
    print(
        "; ".join(
            f"pool {pool}: limit {storage.get_concurrency_info(pool).slot_count}"
            if pool in limited
            else f"pool {pool}: unlimited (the instance has no default pool limit)"
            for pool in OPENGROK_POOLS
        )
    )
    return 0
