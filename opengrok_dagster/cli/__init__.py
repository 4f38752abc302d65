"""The `opengrok` command: the argument parser and ``main``; each command group is a module of this package.

A command's module is imported when that command runs, so `opengrok --help` and a refused argument do not wait for
Dagster to load (seconds): ``provision`` (the offline model, topic partitions, pool limits), ``run`` (the pipeline
through the asset graph's jobs, ``pipeline``, ``execution``, ``dry_run``, ``console``), ``review``, ``lineage`` and
``student`` (promote, export, serve).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

from opengrok_dagster.cli.console import quiet_third_party_warnings
from opengrok_dagster.offline.server import TeacherServerError
from opengrok_dagster.offline_model import OfflineModelError
from opengrok_dagster.training import MASK_MODES


DESCRIPTION = "`opengrok`: provision the offline model, manage topic partitions, and run the pipeline end to end."


class _OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (an unknown choice, a missing argument) as one line and exit 2, like the rest."""

    def error(self, message: str):
        self.exit(2, f"opengrok: error: {message}; `{self.prog} --help` lists the arguments\n")


def _command(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``function`` of ``opengrok_dagster.cli.<module>``, its module imported when the command runs."""

    def handle(args: argparse.Namespace) -> int:
        return getattr(import_module(f"{__name__}.{module}"), function)(args)

    return handle


def _add_setup_commands(commands) -> None:
    provision = commands.add_parser("provision", help="build the offline SmolLM2 checkpoint (once)")
    provision.add_argument("--cache-dir", default=None, help="default $OPENGROK_CACHE_DIR or ~/.cache/opengrok")
    provision.add_argument("--force", action="store_true", help="rebuild even if a complete copy exists")
    provision.set_defaults(handler=_command("provision", "cmd_provision"))

    topics = commands.add_parser("topics", help="list, add, remove or sync topic partitions")
    topics.add_argument("action", choices=["list", "add", "remove", "sync"])
    topics.add_argument("keys", nargs="*", help="topic keys for add/remove")
    topics.set_defaults(handler=_command("provision", "cmd_topics"))

    pools = commands.add_parser(
        "pools", help="show the gpu and teacher pools' limits, given the instance's default where they had none"
    )
    pools.set_defaults(handler=_command("provision", "cmd_pools"))


def _add_run_command(commands) -> None:
    run = commands.add_parser("run", help="materialise the whole pipeline end to end")
    run.add_argument("--round", default=None, help="collection round YYYY-MM-DD (default: today, UTC)")
    run.add_argument("--topics", default=None, help="comma-separated topic keys (default: all partitions)")
    run.add_argument(
        "--modes",
        default=None,
        help="comma-separated mask modes to fine-tune (default: the profile's run_modes; cpu-demo: none,soft; else every mode)",
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
    run.set_defaults(handler=_command("run", "cmd_run"))


def _add_inspection_commands(commands) -> None:
    review = commands.add_parser("review", help="manual review of borderline filtered responses")
    review.add_argument("action", choices=["list", "accept", "reject", "export", "import"])
    review.add_argument(
        "targets",
        nargs="*",
        help="content hashes (or unique prefixes) for accept/reject; a .csv/.parquet file for export/import",
    )
    review.add_argument("--note", default=None, help="a note stored with accept/reject decisions")
    review.add_argument("--reviewer", default=None, help="who decided (default: $USER)")
    review.add_argument("--limit", type=int, default=20, help="how many queued responses `list` prints")
    review.set_defaults(handler=_command("review", "cmd_review"))

    lineage = commands.add_parser("lineage", help="provenance of a training example or a LoRA checkpoint")
    lineage.add_argument(
        "target",
        help="an example_id from filtered_responses, a mask mode (none/paper/hard/soft) or an adapter directory",
    )
    lineage.add_argument(
        "--json", action="store_true", help="the full record as JSON (every example id); the text form shows counts"
    )
    lineage.set_defaults(handler=_command("lineage", "cmd_lineage"))


def _add_student_commands(commands) -> None:
    promote = commands.add_parser("promote", help="choose the adapter that labels posts, or `auto` for the rule")
    promote.add_argument("mode", choices=[*MASK_MODES, "auto"], help="a mask mode, or auto (the promotion rule)")
    promote.set_defaults(handler=_command("student", "cmd_promote"))

    export = commands.add_parser("export", help="write the promoted student merged into its base (safetensors)")
    export.set_defaults(handler=_command("student", "cmd_export"))
    serve = commands.add_parser("serve", help="serve the exported student on an OpenAI-compatible endpoint")
    serve.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
    serve.set_defaults(handler=_command("student", "cmd_serve"))


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="opengrok", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    _add_setup_commands(commands)
    _add_run_command(commands)
    _add_inspection_commands(commands)
    _add_student_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
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
