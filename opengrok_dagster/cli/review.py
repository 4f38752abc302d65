"""`opengrok review`: the manual review queue of borderline filtered responses, keyed by content hash."""

from __future__ import annotations

import argparse
import os

import pandas as pd

from opengrok_dagster.filtering import review
from opengrok_dagster.settings import home_layout


def cmd_review(args: argparse.Namespace) -> int:
    """List, accept, reject, export and import decisions keyed by content hash."""
    if args.action in ("accept", "reject"):
        for target in args.targets:
            _content_hash_prefix(target)
    layout = home_layout()
    filtered = review.read_filtered(layout.home)
    reviewer = args.reviewer or os.environ.get("USER") or None
    with review.ReviewStore(layout.review_store_path) as store:
        ACTIONS[args.action](args, store, filtered, reviewer)
    return 0


def _content_hash_prefix(value: str) -> str:
    """A review target: a content hash or its prefix, 16 hex digits at most (see filtering.dedup.content_hash)."""
    if not value or len(value) > 16 or any(c not in "0123456789abcdef" for c in value.lower()):
        raise ValueError(
            f"{value!r} is not a content hash: give the 16 hex digits (or a unique prefix) that "
            "`opengrok review list` prints first on each line"
        )
    return value


def _list(args, store: review.ReviewStore, filtered: pd.DataFrame, reviewer: str | None) -> None:
    queue = review.review_queue(filtered, store.latest_decisions())
    if queue.empty:
        print("the review queue is empty")
    for row in queue.head(args.limit).itertuples():
        print(f"{row.content_hash}  {row.topic}/{row.template_id}  [{row.reasons}]  {row.response[:100]!r}")
    if len(queue) > args.limit:
        print(f"... {len(queue) - args.limit} more; `opengrok review export queue.csv` writes them all")


def _decide(args, store: review.ReviewStore, filtered: pd.DataFrame, reviewer: str | None) -> None:
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
    print(f"recorded {recorded} {args.action} decision(s); the review sensor re-materialises filtered_responses")


def _export(args, store: review.ReviewStore, filtered: pd.DataFrame, reviewer: str | None) -> None:
    if len(args.targets) != 1:
        raise ValueError("`opengrok review export` needs one output file (.csv or .parquet)")
    queue = review.review_queue(filtered, store.latest_decisions())
    review.export_queue(queue, args.targets[0])
    print(
        f"exported {len(queue)} queued response(s) to {args.targets[0]}; fill in decision (accept/reject) and note, then import it"
    )


def _import(args, store: review.ReviewStore, filtered: pd.DataFrame, reviewer: str | None) -> None:
    if len(args.targets) != 1:
        raise ValueError("`opengrok review import` needs one file written by `opengrok review export`")
    rows = review.read_decisions_file(args.targets[0])
    hashes = review.resolve_hashes(filtered, [content_hash for content_hash, _, _ in rows])
    for content_hash, (_, decision, note) in zip(hashes, rows):
        store.record([content_hash], decision, note, reviewer)
    print(f"imported {len(rows)} decision(s) from {args.targets[0]}")


ACTIONS = {"list": _list, "accept": _decide, "reject": _decide, "export": _export, "import": _import}
