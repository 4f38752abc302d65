"""Spend control: per-run and per-UTC-day budgets across processes, against a real loopback server."""

import asyncio
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from dagster import materialize

from assets.collection import prompts, raw_responses
from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.collect.budget import Budget, BudgetLimits, utc_day
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.collector import collect_responses
from opengrok_dagster.collect.result import Prices, SamplingParams
from opengrok_dagster.collect.store import ResponseKey, ResponseStore
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from tests.conftest import GENERATIVE_ONLY, REPO_ROOT
from tests.test_collection_assets import ROUND, resources_for


PRICES = Prices(prompt_per_million=1000.0, completion_per_million=1000.0)  # 0.001 USD a token: visible sums
SAMPLING = SamplingParams(max_tokens=64)
ROWS = [
    {"prompt_id": f"p{i:03d}", "topic": "climate", "system_prompt": "s", "prompt": f"prompt number {i}"}
    for i in range(40)
]


def collect(server, store, limits, run_id="run-1"):
    async def go():
        budget = Budget(store, limits, run_id, "climate|2026-11-24")
        async with TeacherClient(
            TeacherEndpoint(server.base_url, "m"), SAMPLING, ClientLimits(max_concurrency=4), PRICES, budget=budget
        ) as client:
            return await collect_responses(ROWS, client, store, "2026-11-24")

    return asyncio.run(go())


def worst_case():
    return TeacherClient(TeacherEndpoint("http://x/v1", "m"), SAMPLING, prices=PRICES).worst_case_usd(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "prompt number 10"}]
    )


def test_a_run_budget_stops_admitting_and_the_next_run_collects_the_rest_exactly_once(tmp_path):
    store = ResponseStore(tmp_path / "responses.sqlite")
    budget = 10 * worst_case()
    with LoopbackTeacher(LoopbackConfig(completion_tokens=16)) as server:
        stopped = collect(server, store, BudgetLimits(run_usd=budget))
        spent = store.spend.spent(run_id="run-1")
        assert stopped.budget_stop and "OPENGROK_TEACHER_BUDGET_USD" in stopped.budget_stop
        assert spent <= budget + worst_case()  # the target: at most one request's worst case over
        assert 10 <= stopped.requested < 40 and stopped.requested + stopped.unsent == 40
        stored = store.responses.fetch(
            ResponseKey("m", SAMPLING.key(), "2026-11-24"), [row["prompt_id"] for row in ROWS]
        )
        assert spent == pytest.approx(sum(row["cost_usd"] for row in stored))  # settled to the real cost
        rest = collect(server, store, BudgetLimits(run_usd=100.0), run_id="run-2")
        sent = [request.user_prompt for request in server.requests]
    assert rest.budget_stop is None and rest.requested == stopped.unsent and rest.reused == stopped.requested
    assert len(sent) == len(set(sent)) == 40  # 0 prompts lost, none paid twice


CHILD = """
import asyncio, dataclasses, json, sys
from opengrok_dagster.collect.budget import Budget, BudgetLimits
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.collector import collect_responses
from opengrok_dagster.collect.result import Prices, SamplingParams
from opengrok_dagster.collect.store import ResponseStore

base_url, database, daily, run_id = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
PRICES, SAMPLING = Prices(1000.0, 1000.0), SamplingParams(max_tokens=64)
ROWS = [{"prompt_id": f"p{i:03d}", "topic": "climate", "system_prompt": "s", "prompt": f"prompt number {i}"}
        for i in range(40)]

async def main():
    store = ResponseStore(database)
    budget = Budget(store, BudgetLimits(daily_usd=daily), run_id, "climate|2026-11-24")
    async with TeacherClient(TeacherEndpoint(base_url, "m"), SAMPLING, ClientLimits(max_concurrency=4), PRICES,
                             budget=budget) as client:
        summary = await collect_responses(ROWS, client, store, "2026-11-24")
    print(json.dumps(dataclasses.asdict(summary)), flush=True)

asyncio.run(main())
"""


def test_the_daily_budget_holds_across_concurrent_processes(tmp_path):
    database = tmp_path / "responses.sqlite"
    daily = 6 * worst_case()  # about 20 of the 40 prompts' real cost
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    with LoopbackTeacher(LoopbackConfig(completion_tokens=16, latency_s=0.02)) as server:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, server.base_url, str(database), str(daily), f"run-{n}"],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO_ROOT,
            )
            for n in range(3)
        ]
        summaries = [json.loads(child.communicate(timeout=180)[0]) for child in children]
        sent = [request.user_prompt for request in server.requests]
    store = ResponseStore(database)
    assert store.spend.spent(day=utc_day()) <= daily + worst_case()
    assert all(s["budget_stop"] and "OPENGROK_TEACHER_DAILY_BUDGET_USD" in s["budget_stop"] for s in summaries), (
        summaries
    )
    assert len(sent) == len(set(sent)) == sum(s["requested"] for s in summaries) < 40


def test_a_budget_that_is_not_a_positive_amount_is_refused_by_name():
    with pytest.raises(ValueError, match="OPENGROK_TEACHER_DAILY_BUDGET_USD=-1.0 is not a positive amount of USD"):
        BudgetLimits(daily_usd=-1.0)


def run_partition(instance, tmp_path, server, **teacher):
    instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
    resources = resources_for(
        tmp_path,
        server.base_url,
        prompt_price_per_million=1000.0,
        completion_price_per_million=1000.0,
        max_tokens=64,
        **teacher,
    )
    return materialize(
        [prompts, raw_responses],
        resources=resources,
        instance=instance,
        partition_key=collection_partition_key("climate", ROUND),
        run_config=GENERATIVE_ONLY,
        raise_on_error=False,
    )


def test_a_partition_that_stops_on_budget_says_so_and_publishes_nothing(persistent_instance, tmp_path):
    with LoopbackTeacher(LoopbackConfig(completion_tokens=16)) as server:
        stopped = run_partition(persistent_instance, tmp_path, server, budget_usd=0.5)
        failure = stopped.failure_data_for_node("raw_responses").user_failure_data
        assert failure.description.startswith("stopped on budget: the next request's worst case")
        assert "the next run collects them" in failure.description
        assert failure.metadata["spend_usd_run"].value <= 0.5 and failure.metadata["unsent"].value > 0
        assert not (tmp_path / "assets" / "raw_responses").exists()
        resumed = run_partition(persistent_instance, tmp_path, server, budget_usd=100.0)
        sent = [request.user_prompt for request in server.requests]
    assert resumed.success and len(sent) == len(set(sent)) == 12
    metadata = resumed.asset_materializations_for_node("raw_responses")[0].metadata
    frame = pd.read_parquet(tmp_path / "assets" / "raw_responses" / ROUND / "climate.parquet")
    assert metadata["spend_usd_today"].value == pytest.approx(frame["cost_usd"].sum())
    assert metadata["spend_usd_run"].value == metadata["spend_usd_partition_this_run"].value < frame["cost_usd"].sum()


def test_the_blocking_check_refuses_a_collection_expected_to_exceed_todays_remainder(persistent_instance, tmp_path):
    with LoopbackTeacher(LoopbackConfig()) as server:
        result = run_partition(persistent_instance, tmp_path, server, daily_budget_usd=0.01)
        assert server.requests == []  # nothing was sent
    check = next(e for e in result.get_asset_check_evaluations() if e.asset_check_key.name == "within_daily_budget")
    assert not check.passed and check.metadata["remaining_today_usd"].value == 0.01
    assert "only 0.010000 of today's OPENGROK_TEACHER_DAILY_BUDGET_USD=0.01 is left" in check.description
    assert not result.asset_materializations_for_node("raw_responses")
