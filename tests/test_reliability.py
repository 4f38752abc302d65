"""1,000 teacher requests through a real loopback server injecting 20% faults of every kind."""

import asyncio
from bisect import bisect_left
from collections import Counter

import pytest

from devtools.loopback import FAULTS, LoopbackConfig, LoopbackTeacher
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.collector import collect_responses, response_key
from opengrok_dagster.collect.store import ResponseStore


pytestmark = pytest.mark.timing  # rate-limit windows and client timeouts are measured on the wall clock

PROMPTS = 1000
RPM = 3_000  # 50 requests/s: below what the loopback server sustains (~110/s), so the limiter paces the run
LIMITS = ClientLimits(
    max_concurrency=32,
    requests_per_minute=RPM,
    timeout_s=0.5,
    max_attempts=8,
    backoff_initial_s=0.01,
    backoff_max_s=0.05,
)


def test_every_prompt_ends_answered_or_final_error_none_paid_twice_within_the_rate_limit(tmp_path):
    rows = [
        {"prompt_id": f"p{i:04d}", "topic": "climate", "system_prompt": "You are terse.", "prompt": f"question {i}"}
        for i in range(PROMPTS)
    ]
    store = ResponseStore(tmp_path / "responses.sqlite")
    with LoopbackTeacher(LoopbackConfig(fault_rate=0.2, faults=FAULTS, retry_after_s=0.05)) as server:

        async def collect():
            async with TeacherClient(TeacherEndpoint(server.base_url, "grok-test"), limits=LIMITS) as client:
                summary = await collect_responses(rows, client, store, "2026-11-25")
                return summary, response_key(client, "2026-11-25")

        summary, key = asyncio.run(collect())
        requests = list(server.requests)

    faults = Counter(r.fault for r in requests if r.fault)
    assert set(faults) == set(FAULTS) and 0.15 < sum(faults.values()) / len(requests) < 0.25
    stored = store.responses.fetch(key, [row["prompt_id"] for row in rows])
    assert sorted(row["prompt_id"] for row in stored) == [row["prompt_id"] for row in rows]  # none lost
    assert all((row["text"] is None) != (row["error"] is None) for row in stored)  # a response or a final error
    # a response that reached us is never asked for again: at most one clean answer per prompt
    assert max(Counter(r.user_prompt for r in requests if r.fault is None).values()) == 1
    assert summary.requested == PROMPTS
    # the limiter admits at most its one-second burst plus the steady rate in any window; the server sees
    # admissions a little late and bunched on a loaded machine, so allow half a second of delivery jitter
    # (without the limiter this count is ~700, so the check still tells)
    times = sorted(r.at for r in requests)
    window, jitter = 2.0, 0.5
    busiest = max(bisect_left(times, start + window) - index for index, start in enumerate(times))
    assert busiest <= RPM / 60 * (1 + window + jitter)
