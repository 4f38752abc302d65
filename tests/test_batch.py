"""Batch collection through the Files + Batches API, against the loopback batch server (SIGKILL included)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from devtools.batch_server import BatchServerConfig, LoopbackBatchServer
from opengrok_dagster.collect.batch import PollClock, collect_batch
from opengrok_dagster.collect.budget import Budget, BudgetLimits
from opengrok_dagster.collect.client import TeacherConfigurationError, TeacherEndpoint
from opengrok_dagster.collect.result import Prices, SamplingParams
from opengrok_dagster.collect.spend import collection_spend
from opengrok_dagster.collect.store import Claim, ResponseKey, ResponseStore
from opengrok_dagster.collect.teacher import BatchSettings, TeacherSpec
from opengrok_dagster.layout import HomeLayout
from tests.conftest import GENERATIVE_ONLY, REPO_ROOT


ROWS = [
    {"prompt_id": f"p{i:03d}", "topic": "climate", "system_prompt": "s", "prompt": f"prompt number {i}"}
    for i in range(30)
]
PRICES = Prices(1000.0, 1000.0)
FAST = BatchSettings(poll_s=0.05, price_factor=0.5)
COLLECT = """
import sys
from opengrok_dagster.collect.batch import collect_batch
from opengrok_dagster.collect.store import ResponseStore
from tests.test_batch import FAST, ROWS, spec

print(collect_batch(ROWS, spec(sys.argv[1], FAST), ResponseStore(sys.argv[2]), "2026-11-24", "climate"), flush=True)
"""
COMPARED = (
    "prompt_id, teacher_model, sampling_key, round, topic, text, finish_reason, model, prompt_tokens, "
    "completion_tokens, cost_usd, attempts, request_id, error, status_code, anomaly, logprobs"
)


def responses(database) -> list[tuple]:
    with sqlite3.connect(database) as connection:
        return connection.execute(f"SELECT {COMPARED} FROM responses ORDER BY prompt_id").fetchall()


def spec(base_url: str, settings: BatchSettings = FAST, sampling=SamplingParams(max_tokens=64)) -> TeacherSpec:
    return TeacherSpec(TeacherEndpoint(base_url, "m"), sampling, prices=PRICES, batch=settings)


def collect(server, store, settings=FAST, **kwargs):
    return collect_batch(
        ROWS, spec(server.base_url, settings), store, "2026-11-24", "climate", log=lambda message: None, **kwargs
    )


def test_a_batch_writes_ordinary_responses_at_the_batch_price_and_a_rerun_submits_nothing(tmp_path):
    store = ResponseStore(tmp_path / "responses.sqlite")
    with LoopbackBatchServer(BatchServerConfig(processing_s=0.2, fail_custom_ids=frozenset({"p007"}))) as server:
        summary = collect(server, store, run_id="run-1")
        assert (summary.requested, summary.succeeded, summary.failed) == (30, 29, 1)
        spend = collection_spend(tmp_path / "responses.sqlite")  # every result counted at the batch price
        assert [(line.key, line.requests, line.batch_requests) for line in spend.by["run"]] == [("run-1", 30, 30)]
        assert spend.total.batch_usd == spend.total.usd > 0
        rows = {row[0]: row for row in responses(tmp_path / "responses.sqlite")}
        text, prompt_tokens, completion_tokens, cost = (
            rows["p001"][5],
            rows["p001"][8],
            rows["p001"][9],
            rows["p001"][10],
        )
        assert text.startswith("Answer to: prompt number 1 ") and cost == pytest.approx(
            (prompt_tokens + completion_tokens) * 1000 * 0.5 / 1e6
        )
        assert rows["p007"][13] == "batch " + server.created[0] + ": the request failed in the batch"
        server.config.fail_custom_ids = frozenset()
        again = collect(server, store)  # only the failed request goes in a new batch
        assert (again.requested, again.succeeded, len(server.created)) == (1, 1, 2)
        assert collect(server, store).requested == 0 and len(server.created) == 2


@pytest.mark.timing  # the kill must land inside the 2 s batch window
@pytest.mark.parametrize("kill_after", ["created", "recorded"])
def test_sigkill_while_a_batch_is_in_flight_then_rerun_resumes_polling_without_resubmitting(tmp_path, kill_after):
    killed, reference = tmp_path / "killed.sqlite", tmp_path / "reference.sqlite"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    with LoopbackBatchServer(BatchServerConfig(processing_s=2.0)) as server:
        child = subprocess.Popen([sys.executable, "-c", COLLECT, server.base_url, str(killed)], env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + 120
        while not server.created or (kill_after == "recorded" and not _recorded_batch_id(killed)):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert len(server.created) == 1 and not responses(killed)
        summary = collect(server, ResponseStore(killed))
        assert len(server.created) == 1 and summary.succeeded == 30  # 0 resubmissions
        collect(server, ResponseStore(reference))  # the same partition, never interrupted
    assert responses(killed) == responses(reference)  # identical responses table


class FakeClock:
    """Time that moves only when the poller sleeps; ``on_sleep(n)`` runs at the n-th wait (1-based)."""

    def __init__(self, on_sleep=lambda count: None) -> None:
        self.now, self.waits, self.on_sleep = 1000.0, [], on_sleep

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.waits))

    def poll_clock(self) -> PollClock:
        return PollClock(sleep=self.sleep, monotonic=lambda: self.now)


@pytest.mark.parametrize("poll_s", [BatchSettings().poll_s, 7.5])
def test_the_poller_waits_the_configured_interval_between_polls_and_stops_when_the_batch_completes(tmp_path, poll_s):
    with LoopbackBatchServer(BatchServerConfig(processing_s=1e9)) as server:  # in progress until the 3rd wait

        def complete_at_third_wait(count: int) -> None:
            if count == 3:
                server.config.processing_s = 0.0

        clock = FakeClock(complete_at_third_wait)
        polls = []
        summary = collect_batch(
            ROWS,
            spec(server.base_url, BatchSettings(poll_s=poll_s)),
            ResponseStore(tmp_path / "responses.sqlite"),
            "2026-11-24",
            "climate",
            log=lambda message: polls.append(message) if " in_progress" in message else None,
            clock=clock.poll_clock(),
        )
    assert clock.waits == [poll_s, poll_s, poll_s]  # three waits of the interval, none after the status changed
    assert len(polls) == 3 and summary.succeeded == 30 and len(server.created) == 1


def test_the_poller_gives_up_after_max_wait_and_a_rerun_polls_the_same_batch(tmp_path):
    settings = BatchSettings(poll_s=30.0, max_wait_s=100.0)
    store = ResponseStore(tmp_path / "responses.sqlite")
    with LoopbackBatchServer(BatchServerConfig(processing_s=1e9)) as server:
        clock = FakeClock()
        with pytest.raises(TimeoutError, match=r"still in_progress after 100s; rerun to keep polling it"):
            collect(server, store, settings=settings, clock=clock.poll_clock())
        assert clock.waits == [30.0] * 4  # polled at 0, 30, 60, 90 and 120 s: past the deadline, no 5th wait
        server.config.processing_s = 0.0
        again = collect(server, store, settings=settings, clock=FakeClock().poll_clock())
    assert again.succeeded == 30 and len(server.created) == 1


def test_a_poll_interval_or_price_factor_out_of_range_is_refused_with_the_setting():
    with pytest.raises(ValueError, match=r"batch_poll_s=0 must be a positive number of seconds between polls"):
        BatchSettings(poll_s=0)
    with pytest.raises(ValueError, match=r"batch_price_factor=2 must be in \(0, 1\]: the batch price over the online"):
        BatchSettings(price_factor=2)


def _recorded_batch_id(database) -> bool:
    try:
        with sqlite3.connect(database) as connection:
            return bool(connection.execute("SELECT batch_id FROM batches WHERE batch_id IS NOT NULL").fetchone())
    except sqlite3.OperationalError:
        return False


def test_a_batch_budget_admits_only_what_fits_and_the_rest_stays_missing(tmp_path):
    store = ResponseStore(tmp_path / "responses.sqlite")
    budget = Budget(store, BudgetLimits(run_usd=0.5), "run-1", "climate|2026-11-24")
    with LoopbackBatchServer(BatchServerConfig(processing_s=0.1)) as server:
        summary = collect(server, store, budget=budget)
        assert summary.budget_stop and 0 < summary.requested < 30 and summary.requested + summary.unsent == 30
        assert store.spend.spent(run_id="run-1") <= 0.5
        rest = collect(server, store)
    assert rest.requested == summary.unsent and len(responses(tmp_path / "responses.sqlite")) == 30


def test_an_endpoint_without_the_batch_api_is_refused_clearly(tmp_path):
    with LoopbackBatchServer() as server:  # under another prefix every route is a 404, as on `transformers serve`
        without_batches = server.base_url.replace("/v1", "/chat-only/v1")
        with pytest.raises(
            TeacherConfigurationError, match="refused the Batch API .*OPENGROK_TEACHER_COLLECTION=online"
        ):
            collect_batch(
                ROWS,
                spec(without_batches, sampling=SamplingParams()),
                ResponseStore(tmp_path / "r.sqlite"),
                "2026-11-24",
                "climate",
                log=lambda m: None,
            )
    store = ResponseStore(tmp_path / "r.sqlite")  # nothing was submitted: the prompts are free for an online run
    assert (
        store.claims.claim(ResponseKey("m", SamplingParams().key(), "2026-11-24"), "p000", "online", 5) is Claim.MINE
    )


def test_raw_responses_in_batch_mode_materialise_from_one_batch(persistent_instance, tmp_path):
    import pandas as pd
    from dagster import materialize

    from assets.collection import prompts, raw_responses
    from opengrok_dagster.partitions import collection_partition_key, topic_partitions
    from tests.test_collection_assets import ROUND, resources_for

    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
    with LoopbackBatchServer(BatchServerConfig(processing_s=0.2)) as server:
        resources = resources_for(
            tmp_path,
            server.base_url,
            collection="batch",
            batch_poll_s=0.05,
            prompt_price_per_million=2.0,
            completion_price_per_million=8.0,
        )
        result = materialize(
            [prompts, raw_responses],
            resources=resources,
            instance=persistent_instance,
            partition_key=collection_partition_key("climate", ROUND),
            run_config=GENERATIVE_ONLY,
        )
        assert result.success and len(server.created) == 1
    (run,) = collection_spend(HomeLayout(tmp_path).response_store_path).by["run"]  # the run that paid
    assert (run.key, run.requests, run.batch_requests) == (result.run_id, 12, 12)
    frame = pd.read_parquet(tmp_path / "assets" / "raw_responses" / ROUND / "climate.parquet")
    assert len(frame) == 12 and frame["error"].isna().all() and frame["request_id"].str.startswith("req-").all()
    expected = (frame["prompt_tokens"] * 2.0 + frame["completion_tokens"] * 8.0) * 0.5 / 1e6
    assert frame["cost_usd"].tolist() == pytest.approx(expected.tolist())  # the batch price
