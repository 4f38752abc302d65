"""End-to-end time of `opengrok run` on the offline default, and the peak memory of each stage.

Each fresh run gets an empty $OPENGROK_HOME (the provisioned offline model is shared, as after `make setup`);
unchanged runs then repeat `opengrok run` on the last fresh run's home, where nothing should be collected or
trained again. Prints a Markdown table: each run's stage times, the median/min/max, and the peak resident
memory of the process tree (the CLI, the embedded teacher server, training subprocesses) in each stage.

    .venv/bin/python -m bench.end_to_end --fresh 3 --unchanged 1
    .venv/bin/python -m bench.end_to_end --fresh 0 --unchanged 1 --home-root /tmp/e2e   # rerun a kept home
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.measure import Measured, gib, machine_details, run_measured, spread
from opengrok_dagster.layout import HomeLayout


STAGES = ("start-up", "collect", "filter + masks", "fine-tune", "evaluate", "promote + label")
STAGE_OF_LABEL = {
    "[collect": "collect",
    "[filter + mask tables]": "filter + masks",
    "[fine-tune]": "fine-tune",
    "[evaluate]": "evaluate",
    "[promote]": "promote + label",
    "[label": "promote + label",
}


def stage_of(line: str) -> str | None:
    """The CLI prints `<label> ...` as a stage starts; map its label to the stage it belongs to."""
    if not line.rstrip().endswith(" ..."):
        return None
    return next((stage for prefix, stage in STAGE_OF_LABEL.items() if line.startswith(prefix)), None)


def opengrok_run(home: Path) -> Measured:
    env = {**os.environ, "OPENGROK_HOME": str(home), "DAGSTER_HOME": str(HomeLayout(home).dagster_home)}
    measured = run_measured(
        [sys.executable, "-m", "opengrok_dagster.cli", "run"], env=env, stage_of=stage_of, first_stage="start-up"
    )
    if measured.returncode:
        raise SystemExit(
            f"`opengrok run` failed (exit {measured.returncode}) with OPENGROK_HOME={home}; see its output above"
        )
    return measured


def table(fresh: list[Measured], unchanged: list[Measured]) -> list[str]:
    lines = ["| run | " + " | ".join(STAGES) + " | total |", "|---|" + "---:|" * (len(STAGES) + 1)]
    for name, runs in (("fresh", fresh), ("unchanged", unchanged)):
        for number, run in enumerate(runs, start=1):
            cells = [f"{run.stage_seconds.get(stage, 0):,.0f}" for stage in STAGES]
            lines.append(f"| {name} {number} | " + " | ".join(cells) + f" | {run.seconds:,.0f} |")
        if len(runs) > 1:
            cells = [spread([run.stage_seconds.get(stage, 0) for run in runs]) for stage in STAGES]
            lines.append(
                f"| **{name}: median (min-max)** | "
                + " | ".join(cells)
                + f" | **{spread([r.seconds for r in runs])}** |"
            )
    runs = fresh + unchanged
    peaks = [gib(max(run.stage_peak_rss.get(stage, 0) for run in runs)) for stage in STAGES]
    lines.append(
        "| peak memory (process tree RSS, max over runs) | " + " | ".join(peaks) + " | "
        f"{gib(max(max(run.stage_peak_rss.values(), default=0) for run in runs))} |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", type=int, default=3, help="runs, each on an empty OPENGROK_HOME")
    parser.add_argument("--unchanged", type=int, default=1, help="reruns on the last fresh run's home")
    parser.add_argument(
        "--home-root",
        type=Path,
        default=None,
        help="keep the runs' homes here (default: a temporary directory, removed afterwards)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opengrok-e2e-") as scratch:
        root = args.home_root or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        existing = len(list(root.glob("run-*")))
        homes = [root / f"run-{existing + number}" for number in range(1, args.fresh + 1)]
        fresh = [opengrok_run(home) for home in homes]
        last = homes[-1] if homes else root / f"run-{existing}"
        if args.unchanged and not HomeLayout(last).assets_dir.is_dir():
            raise SystemExit(
                f"--unchanged needs a completed run to repeat; none in {root} (give --fresh 1 or --home-root)"
            )
        unchanged = [opengrok_run(last) for _ in range(args.unchanged)]
    print(f"\n{machine_details()}; load average at the end {os.getloadavg()[0]:.1f}\n")
    print("Seconds per stage of `opengrok run` on the offline default:\n")
    print("\n".join(table(fresh, unchanged)))


if __name__ == "__main__":
    main()
