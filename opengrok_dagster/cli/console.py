"""What `opengrok` prints while it runs Dagster jobs: progress lines on the terminal, everything else in a log.

Dagster's console log (step events, a failure's "Stack Trace:" of Dagster internals, once for the step and again
for the run), the training subprocess's output and third-party warnings go to one file per command,
``$OPENGROK_HOME/logs/opengrok-<UTC time>.log``. The terminal keeps the progress lines and, for a failed step,
its message alone when the cause is a ``Failure`` the project raised (a user's mistake, said in one line), or
the full traceback when it is a real crash; either way followed by the log's path. The UI and `dagster`
commands are untouched: this applies only inside the CLI.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import UTC, datetime

from opengrok_dagster.layout import HomeLayout


# Warnings of libraries the user cannot act on (Dagster's beta/preview notices for APIs the project chose),
# silenced in the CLI only; the tests and `dagster dev` still show them.
QUIET_WARNINGS = (r".* is currently in (beta|preview)", r".*is deprecated and will be removed in .*dagster")

# Dagster errors that report a decision, not a crash: the message is the whole story.
ONE_LINE_ERRORS = ("DagsterAssetCheckFailedError",)


def quiet_third_party_warnings() -> None:
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class RunConsole:
    """Routes the output of every run this command starts into one log file; see the module docstring."""

    def __init__(self, layout: HomeLayout) -> None:
        self.log_path = layout.cli_run_log(f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{os.getpid()}")

    @contextmanager
    def logging_to_file(self) -> Iterator[None]:
        """Both the Python streams and file descriptors 1 and 2 (subprocesses, C extensions) go to the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        with open(self.log_path, "a", encoding="utf-8", buffering=1) as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                with redirect_stdout(log), redirect_stderr(log):
                    yield
            finally:
                log.flush()
                for fd, original in zip((1, 2), saved):
                    os.dup2(original, fd)
                    os.close(original)

    def report_failure(self, result) -> None:
        """Say on stderr why the run of ``result`` (an ExecuteInProcessResult) failed, then where the log is."""
        failures = [event for event in result.all_events if event.is_step_failure]
        # Dagster mirrors a step's console output from its capture after the fact, and may drop the last lines
        # when the step ends: the failures' full errors are written here again, so the log surely holds them.
        with open(self.log_path, "a", encoding="utf-8") as log:
            for event in failures:
                error = event.step_failure_data.error
                log.write(f"\n=== run {result.run_id}: step {event.step_key} failed ===\n")
                log.write((error.to_string() if error else event.message or "") + "\n")
        for event in failures:
            print(f"opengrok: error: {event.step_key}: {failure_text(event.step_failure_data)}", file=sys.stderr)
        if not failures:
            runs = [event.message for event in result.all_events if event.event_type_value == "RUN_FAILURE"]
            print(f"opengrok: error: {runs[-1] if runs else 'the run failed'}", file=sys.stderr)
        print(f"opengrok: the full log is {self.log_path}", file=sys.stderr, flush=True)


def failure_text(failure) -> str:
    """A step failure as the user should read it: a project ``Failure``'s description (one line), a blocking
    check's verdict, or anything else as its full traceback (a crash is a bug to report, with its stack)."""
    if failure.user_failure_data is not None and failure.user_failure_data.description:
        return failure.user_failure_data.description
    error = failure.error
    if error is None:
        return "the step failed without an error (see the full log)"
    if error.cls_name in ONE_LINE_ERRORS:
        return "; ".join(line.strip() for line in error.message.splitlines() if line.strip())
    return error.to_string().rstrip()
