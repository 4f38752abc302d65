"""Run a command while sampling the resident memory of its whole process tree, stage by stage.

Benches and the end-to-end run start model servers and training subprocesses, so the peak of the parent
alone would miss most of the memory; the sampler sums the RSS of the process and all its descendants
(shared pages count once per process, so the figure is an upper bound).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil


@dataclass
class Measured:
    returncode: int
    seconds: float
    output: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_peak_rss: dict[str, int] = field(default_factory=dict)


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            continue
    return total


def run_measured(
    command: list[str],
    env: dict[str, str] | None = None,
    stage_of: Callable[[str], str | None] = lambda line: None,
    first_stage: str = "run",
    interval_s: float = 0.25,
    echo: bool = True,
) -> Measured:
    """Run ``command``; ``stage_of(line)`` names the stage a line of its output starts (None: no change).

    Its stdout is captured (the figures) and echoed to stderr as it comes; its stderr passes straight through.
    """
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    watched = psutil.Process(process.pid)
    state = {"stage": first_stage, "since": started}
    measured = Measured(returncode=-1, seconds=0.0, output="")
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval_s):
            try:
                rss = tree_rss(watched)
            except psutil.Error:
                return
            stage = state["stage"]
            measured.stage_peak_rss[stage] = max(measured.stage_peak_rss.get(stage, 0), rss)

    def close_stage(now: float) -> None:
        stage = state["stage"]
        measured.stage_seconds[stage] = measured.stage_seconds.get(stage, 0.0) + now - state["since"]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if echo:
            sys.stderr.write(line)
            sys.stderr.flush()
        stage = stage_of(line)
        if stage and stage != state["stage"]:
            now = time.monotonic()
            close_stage(now)
            state.update(stage=stage, since=now)
    measured.returncode = process.wait()
    done.set()
    sampler.join()
    now = time.monotonic()
    close_stage(now)
    measured.seconds = now - started
    measured.output = "".join(lines)
    return measured


def machine_details() -> str:
    """One line naming what the figures were measured on; wall times mean little without it."""
    memory = psutil.virtual_memory().total / 2**30
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_version = f"torch {torch.__version__}"
    except ImportError:
        gpu, torch_version = "GPU unknown", "no torch"
    cpu = platform.processor() or platform.machine()
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {memory:.0f} GiB RAM, {gpu}; {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {torch_version}"
    )


def spread(values: list[float], digits: int = 0) -> str:
    """Median (min-max): how every bench reports a figure measured several times."""
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
