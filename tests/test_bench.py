"""The benchmark harness: per-stage memory of a process tree, partial reruns keeping the other sections, and the
module every section runs."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.__main__ import BENCHES, kept_sections
from bench.end_to_end import stage_of
from bench.measure import run_measured


REPO_ROOT = Path(__file__).resolve().parent.parent

# A parent that starts a child holding ~300 MB during stage "grow": the sampler must see the child's memory.
TREE = """
import subprocess, sys, time
print("[small] ...", flush=True); time.sleep(1)
print("[grow] ...", flush=True)
subprocess.run([sys.executable, "-c", "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(1.5)"])
print("figures", flush=True)
"""


@pytest.mark.timing  # the child must still hold its memory when the sampler looks
def test_peak_memory_is_attributed_to_the_stage_whose_child_used_it():
    measured = run_measured(
        [sys.executable, "-c", TREE],
        stage_of=lambda line: line.split()[0] if line.endswith(" ...\n") else None,
        interval_s=0.05,
        echo=False,
    )
    assert measured.returncode == 0 and measured.output.endswith("figures\n")
    assert measured.stage_peak_rss["[grow]"] > measured.stage_peak_rss["[small]"] + 250 * 2**20
    assert 0.9 < measured.stage_seconds["[small]"] < measured.seconds


def test_opengrok_run_progress_lines_map_to_stages():
    assert stage_of("[collect 2/3] topic 'football', round 2026-11-26 ...\n") == "collect"
    assert stage_of("[fine-tune] mask mode hard ...\n") == "fine-tune"
    assert stage_of("[fine-tune] mask mode hard: done in 40s\n") is None


def test_rerunning_one_bench_keeps_the_other_sections():
    text = (
        "# Benchmarks\n<!-- bench:filter -->\n## Filter\n| a |\n<!-- /bench:filter -->\n"
        "<!-- bench:mask -->\n## Mask\n<!-- /bench:mask -->\n"
    )
    sections = kept_sections(text)
    assert list(sections) == ["filter", "mask"]
    assert sections["filter"] == "<!-- bench:filter -->\n## Filter\n| a |\n<!-- /bench:filter -->\n"


def test_every_section_runs_a_module_that_exists():
    """`make bench` runs each section by module name, the studies of experiments/ among them: a module that moved
    fails here rather than hours into a full run."""
    missing = [
        f"{name}: {bench.module}" for name, bench in BENCHES.items() if importlib.util.find_spec(bench.module) is None
    ]
    assert missing == []


@pytest.mark.integration
def test_gpu_check_runs_shrunk_on_cpu():
    """bench/gpu_check.py has never had a GPU here: its --smoke run takes every code path it can on a CPU."""
    process = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--smoke", "--budget-s", "1200"],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=REPO_ROOT,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = process.stdout
    for mode in ("none", "paper", "hard", "soft"):
        assert f"| {mode} (SDPA) |" in report
    assert "| FlexAttention block mask |" in report and "largest |flex - sdpa|: output" in report
    assert "skipped:" not in report.replace("skipped in the smoke run", "")
    assert "| ours (hard) |" in report and "| ours (hard, packed) |" in report and "TRL SFTTrainer" in report
    assert "posts/s" in report


def test_gpu_check_refuses_to_run_full_size_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    process = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert process.returncode == 1 and "needs a CUDA GPU; on a CPU run it shrunk with --smoke" in process.stderr


def test_labelling_floor_runs_at_tiny_size(tiny_student):
    """bench/labelling_floor.py end to end on the tiny student and 8 posts (the lead measures at full size)."""
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.labelling_floor",
            "--model",
            tiny_student,
            "--posts",
            "8",
            "--rounds",
            "2",
            "--chunk-posts",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "| tweeteval_sentiment |" in process.stdout and "8 TweetEval validation posts" in process.stdout
