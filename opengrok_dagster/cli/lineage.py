"""`opengrok lineage`: where a training example or a LoRA checkpoint came from."""

from __future__ import annotations

import argparse
import os

from opengrok_dagster.lineage import checkpoint_lineage, example_lineage, format_lineage, lineage_json
from opengrok_dagster.settings import opengrok_home
from opengrok_dagster.training import MASK_MODES


def cmd_lineage(args: argparse.Namespace) -> int:
    """Print the provenance chain of a training example, or of a checkpoint (mask mode or adapter directory)."""
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
