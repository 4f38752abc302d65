"""Exactly once across processes: concurrent runs of one partition, lapsed claims, the shared RPM/TPM window,
and concurrent first runs on a fresh Dagster home. Children are real processes against a real loopback server."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.collect.result import SamplingParams, TeacherResult
from opengrok_dagster.collect.store import Claim, ResponseKey, ResponseStore
from tests.conftest import REPO_ROOT


COLLECT = """
import asyncio, dataclasses, json, sys
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.collector import Leases, collect_responses
from opengrok_dagster.collect.ratelimit import SharedRateLimiter
from opengrok_dagster.collect.store import ResponseStore

base_url, database, prompts, rpm = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rows = [{"prompt_id": f"p{i:03d}", "topic": "climate", "system_prompt": "s", "prompt": f"prompt {i}"}
        for i in range(prompts)]

async def main():
    store = ResponseStore(database)
    shared = SharedRateLimiter(store, "loopback", rpm, None, window_s=1.0) if rpm else None
    async with TeacherClient(TeacherEndpoint(base_url, "m"), limits=ClientLimits(max_concurrency=4),
                             shared_limiter=shared) as client:
        summary = await collect_responses(rows, client, store, "2026-11-24", leases=Leases(lease_s=5.0, poll_s=0.05))
    print(json.dumps(dataclasses.asdict(summary)), flush=True)

asyncio.run(main())
"""


def run_concurrently(server, database, processes, prompts, rpm=0.0):
    children = [
        subprocess.Popen(
            [sys.executable, "-c", COLLECT, server.base_url, str(database), str(prompts), str(rpm)],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
        )
        for _ in range(processes)
    ]
    outputs = [child.communicate(timeout=180)[0] for child in children]
    assert all(child.returncode == 0 for child in children)
    return [json.loads(output) for output in outputs]


@pytest.mark.timing  # asserts the child processes overlapped (work shared)
@pytest.mark.parametrize("processes", [2, 8])
def test_concurrent_runs_of_one_partition_request_each_prompt_once(tmp_path, processes):
    database = tmp_path / "responses.sqlite"
    with LoopbackTeacher(LoopbackConfig(latency_s=0.05)) as server:
        summaries = run_concurrently(server, database, processes, prompts=40)
        sent = [request.user_prompt for request in server.requests]
    assert len(sent) == len(set(sent)) == 40  # teacher requests == distinct prompts
    assert sum(s["requested"] for s in summaries) == 40 and all(s["failed"] == 0 for s in summaries)
    assert all(s["reused"] + s["requested"] == 40 for s in summaries)  # every run ends with the whole partition
    assert sum(s["requested"] > 0 for s in summaries) > 1  # the work was shared, not serialised behind one run
    store = ResponseStore(database)
    key = ResponseKey("m", SamplingParams().key(), "2026-11-24")
    assert len(store.responses.answered(key, [f"p{i:03d}" for i in range(40)])) == 40


@pytest.mark.timing  # a 0.3 s lease against a 0.35 s sleep
def test_a_live_claim_is_respected_and_a_killed_runs_claim_lapses(tmp_path):
    store = ResponseStore(tmp_path / "responses.sqlite")
    key = ResponseKey("m", "{}", "2026-11-24")
    assert store.claims.claim(key, "p1", "run-a", lease_s=0.3) is Claim.MINE
    assert store.claims.claim(key, "p1", "run-b", lease_s=0.3) is Claim.HELD
    assert store.claims.claim(key, "p1", "run-a", lease_s=0.3) is Claim.MINE  # the owner may renew its own claim
    time.sleep(0.35)  # run-a died without renewing
    assert store.claims.claim(key, "p1", "run-b", lease_s=5) is Claim.MINE
    store.responses.record(
        key, "p1", "climate", TeacherResult("ok", "stop", "m", 1, 1, 0.0, 0.1, 1, "r"), owner="run-b"
    )
    assert store.claims.claim(key, "p1", "run-c", lease_s=5) is Claim.ANSWERED


@pytest.mark.timing  # requests counted per 1 s window across processes
def test_rpm_limit_holds_across_processes(tmp_path):
    """Three processes share a limit of 5 requests per (1-second) window: at most 5 arrive in any window."""
    database = tmp_path / "responses.sqlite"
    with LoopbackTeacher(LoopbackConfig()) as server:
        run_concurrently(server, database, processes=3, prompts=18, rpm=5)
        arrivals = sorted(request.at for request in server.requests)
    with sqlite3.connect(database) as connection:
        admitted = sorted(at for (at,) in connection.execute("SELECT at FROM rate_events WHERE scope='loopback'"))
    assert len(arrivals) == len(admitted) == 18
    # the guarantee is on admissions (arrival adds the transport's jitter, large on a loaded CPU)
    assert max(sum(1 for t in admitted if start <= t < start + 1.0) for start in admitted) <= 5
    assert admitted[-1] - admitted[0] >= 3.0  # 18 requests at 5 a window need at least 3 full windows


def test_concurrent_first_runs_on_a_fresh_home_each_succeed_and_leave_the_instance_usable(tmp_path):
    """Without the instance lock, 4 of 8 failed with alembic's 'more than one head present', for good."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {
        "OPENGROK_HOME": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [sys.executable, "-m", "opengrok_dagster.cli", "topics", "sync"]
    children = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)
    ]
    results = [(child.wait(timeout=300), child.stderr.read()) for child in children]
    assert all(code == 0 for code, _ in results), [err[-300:] for _, err in results]
    listed = subprocess.run(
        [sys.executable, "-m", "opengrok_dagster.cli", "topics", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and listed.stdout.split() == ["climate", "smartphones", "football"]
