"""The benchmark harness: per-stage memory of a process tree, and partial reruns keeping the other sections."""

import sys

import pytest

from bench.__main__ import kept_sections
from bench.end_to_end import stage_of
from bench.measure import run_measured

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
    measured = run_measured([sys.executable, "-c", TREE], stage_of=lambda line: line.split()[0] if line.endswith(" ...\n") else None,
                            interval_s=0.05, echo=False)
    assert measured.returncode == 0 and measured.output.endswith("figures\n")
    assert measured.stage_peak_rss["[grow]"] > measured.stage_peak_rss["[small]"] + 250 * 2**20
    assert 0.9 < measured.stage_seconds["[small]"] < measured.seconds


def test_opengrok_run_progress_lines_map_to_stages():
    assert stage_of("[collect 2/3] topic 'football', round 2026-11-26 ...\n") == "collect"
    assert stage_of("[fine-tune] mask mode hard ...\n") == "fine-tune"
    assert stage_of("[fine-tune] mask mode hard: done in 40s\n") is None


def test_rerunning_one_bench_keeps_the_other_sections():
    text = ("# Benchmarks\n<!-- bench:filter -->\n## Filter\n| a |\n<!-- /bench:filter -->\n"
            "<!-- bench:mask -->\n## Mask\n<!-- /bench:mask -->\n")
    sections = kept_sections(text)
    assert list(sections) == ["filter", "mask"]
    assert sections["filter"] == "<!-- bench:filter -->\n## Filter\n| a |\n<!-- /bench:filter -->\n"
