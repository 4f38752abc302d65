"""SIGKILL during collection loses nothing received; the rerun requests only what is missing."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from devtools.loopback import LoopbackConfig, LoopbackTeacher


pytestmark = pytest.mark.timing  # the kill must land while the child is mid-collection

GRID = """
from opengrok_dagster.collect.prompts import PromptGridConfig, build_prompt_grid
from opengrok_dagster.collect.topics import Topic

rows = build_prompt_grid(Topic("climate", "climate change", ("the heatwave", "the summit")),
                         PromptGridConfig(base_per_topic=40, style_per_topic=40, adversarial_per_topic=20))
"""
COLLECT = (
    GRID
    + """
import asyncio, sys
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.collector import Leases, collect_responses
from opengrok_dagster.collect.store import ResponseStore

async def main():
    # The killed run's claims on its in-flight prompts lapse after lease_s; the rerun then takes them.
    async with TeacherClient(TeacherEndpoint(sys.argv[1], "m"), limits=ClientLimits(max_concurrency=4)) as client:
        print(await collect_responses(rows, client, ResponseStore(sys.argv[2]), "2026-11-24",
                                      leases=Leases(lease_s=2.0, poll_s=0.1)), flush=True)

asyncio.run(main())
"""
)


def stored(path):
    try:
        with sqlite3.connect(path) as connection:
            return dict(connection.execute("SELECT prompt_id, text FROM responses WHERE error IS NULL"))
    except sqlite3.OperationalError:  # the child has not created the table yet
        return {}


def test_sigkill_mid_collection_then_rerun_requests_only_the_missing(tmp_path):
    database = tmp_path / "responses.sqlite"
    with LoopbackTeacher(LoopbackConfig(latency_s=0.05)) as server:
        child = subprocess.Popen([sys.executable, "-c", COLLECT, server.base_url, str(database)])
        deadline = time.monotonic() + 60
        while not (database.exists() and len(stored(database)) >= 30):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        before_kill = stored(database)
        assert 30 <= len(before_kill) < 100
        sent_before = len(server.requests)

        subprocess.run([sys.executable, "-c", COLLECT, server.base_url, str(database)], check=True, timeout=120)
        after = stored(database)
        resent = [r.user_prompt for r in server.requests[sent_before:]]

    assert len(after) == 100
    assert {p: after[p] for p in before_kill} == before_kill  # nothing received was lost or replaced
    namespace = {}
    exec(GRID, namespace)
    prompt_id_of = {row["prompt"]: row["prompt_id"] for row in namespace["rows"]}
    resent_ids = [prompt_id_of[prompt] for prompt in resent]
    assert not set(resent_ids) & set(before_kill)  # no completed prompt was paid for twice
    assert sorted(resent_ids) == sorted(set(after) - set(before_kill))
