"""Backfills per topic partition as an operator runs them: `dagster dev` (webserver + daemon) on loopback,
a backfill launched through the webserver's GraphQL API exactly as the UI's partition picker launches it,
re-executed from failure as the backfill page's "Re-execute" button does, and `dagster job backfill`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus

from devtools.loopback import LoopbackTeacher
from opengrok_dagster.offline.serving import read_body
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from tests.conftest import REPO_ROOT, generative_only_profile


pytestmark = pytest.mark.integration

ROUND = "2026-11-24"
TOPICS = ("volcanoes", "chess", "gardening")
# job backfills (the CLI) end COMPLETED once every run is submitted; asset backfills end COMPLETED_*
FINISHED = {
    BulkActionStatus.COMPLETED,
    BulkActionStatus.COMPLETED_SUCCESS,
    BulkActionStatus.COMPLETED_FAILED,
    BulkActionStatus.FAILED,
    BulkActionStatus.CANCELED,
}


@dataclass
class TeacherWithRefusals(LoopbackTeacher):
    """The loopback teacher, answering HTTP 403 to every prompt that names a topic in `refused` (as a provider
    refusing a topic until a policy is lifted): a fault a real server cannot be told to make per topic."""

    refused: set[str] = field(default_factory=set)

    async def _app(self, scope, receive, send) -> None:
        body = await read_body(receive)
        if any(topic in body.decode() for topic in self.refused):
            payload = b'{"error":{"message":"this topic is not allowed for this key"}}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            return await send({"type": "http.response.body", "body": payload})

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        await super()._app(scope, replay, send)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DagsterDev:
    """`dagster dev` for the project's code location, on loopback, with its own DAGSTER_HOME and OPENGROK_HOME."""

    def __init__(self, root: Path, teacher: LoopbackTeacher):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dagster_home = root / "dagster_home"
        self.dagster_home.mkdir()
        (self.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        catalogue = root / "topics.yaml"
        catalogue.write_text("topics:\n" + "".join(f"  - key: {topic}\n" for topic in TOPICS))
        self.opengrok_home = root / "home"
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            "OPENGROK_HOME": str(self.opengrok_home),
            "OPENGROK_TOPIC_CATALOGUE": str(catalogue),
            "OPENGROK_TEACHER_BASE_URL": teacher.base_url,
            "OPENGROK_TEACHER_MODEL": "grok-test",
            "OPENGROK_TEACHER_API_KEY_VAR": "OPENGROK_TEST_TEACHER_KEY",
            "OPENGROK_TEST_TEACHER_KEY": "test-key",
            "OPENGROK_PROFILE": str(generative_only_profile(root)),  # the loopback teacher cannot annotate posts
        }
        self.log = root / "dagster-dev.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 240) -> "DagsterDev":
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-m",
                "opengrok_dagster.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dagster dev exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if "opengrok" in str(
                    self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
                ):
                    locations = self.graphql(
                        "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
                    )
                    if all(
                        entry["loadStatus"] == "LOADED" for entry in locations["workspaceOrError"]["locationEntries"]
                    ):
                        return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(
            f"dagster dev did not load the code location in {timeout_s}s:\n{self.log.read_text()[-3000:]}"
        )

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        payload = response.json()
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def stop(self) -> None:
        """SIGTERM to dagster dev's own session (webserver, daemon, code servers), then SIGKILL to what is left: dagster
        dev can exit before its code servers, and after a backfill it may sit out a whole minute in shutdown."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


@pytest.fixture(scope="module")
def teacher():
    with TeacherWithRefusals() as server:
        yield server


@pytest.fixture(scope="module")
def dev(tmp_path_factory, teacher):
    server = DagsterDev(tmp_path_factory.mktemp("backfill"), teacher)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_instance(dev):
    """The same instance the webserver and daemon use, opened as another process would."""
    with DagsterInstance.from_config(str(dev.dagster_home)) as shared:
        shared.add_dynamic_partitions(topic_partitions.name, list(TOPICS))
        yield shared


IN_PROCESS = {"execution": {"config": {"in_process": {}}}}

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""

REEXECUTE_BACKFILL = """
mutation Reexecute($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""


def _wait_for_backfill(instance: DagsterInstance, backfill_id: str, timeout_s: float = 420):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        backfill = instance.get_backfill(backfill_id)
        runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
        if backfill.status in FINISHED and all(run.is_finished for run in runs):
            return backfill, runs
        time.sleep(2)
    raise TimeoutError(f"backfill {backfill_id} still {instance.get_backfill(backfill_id).status} after {timeout_s}s")


def _wait_for_failure_record(log_file: Path, partition: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_file.exists():
            records = [json.loads(line) for line in log_file.read_text().splitlines()]
            matching = [record for record in records if record["partition"] == partition]
            if matching:
                return matching[0]
        time.sleep(2)
    raise TimeoutError(f"no failure of {partition} recorded in {log_file} after {timeout_s}s")


def _partitions(runs) -> dict[str, DagsterRunStatus]:
    return {run.tags["dagster/partition"]: run.status for run in runs}


def _launched(result: dict, mutation: str) -> str:
    outcome = result[mutation]
    assert outcome["__typename"] == "LaunchBackfillSuccess", outcome
    return outcome["backfillId"]


def test_backfill_over_topics_materialises_each_and_a_rerun_redoes_only_the_failed_one(dev, shared_instance, teacher):
    keys = [str(collection_partition_key(topic, ROUND)) for topic in TOPICS]
    teacher.refused = {"chess"}
    backfill_id = _launched(
        dev.graphql(
            LAUNCH_BACKFILL,
            {
                "params": {
                    "partitionNames": keys,
                    "assetSelection": [{"path": ["prompts"]}, {"path": ["raw_responses"]}],
                    "title": "three topics, one refused",
                    # each run in one process: what the UI's launchpad sets with `execution: {config: {in_process: {}}}`
                    "runConfigData": IN_PROCESS,
                }
            },
        ),
        "launchPartitionBackfill",
    )

    backfill, runs = _wait_for_backfill(shared_instance, backfill_id)
    statuses = _partitions(runs)
    assert statuses == {
        f"{ROUND}|volcanoes": DagsterRunStatus.SUCCESS,
        f"{ROUND}|chess": DagsterRunStatus.FAILURE,
        f"{ROUND}|gardening": DagsterRunStatus.SUCCESS,
    }, dev.log.read_text()[-3000:]
    assert backfill.status == BulkActionStatus.COMPLETED_FAILED
    for topic in ("volcanoes", "gardening"):
        assert len(pd.read_parquet(dev.opengrok_home / "assets" / "raw_responses" / ROUND / f"{topic}.parquet")) == 12
    assert not (dev.opengrok_home / "assets" / "raw_responses" / ROUND / "chess.parquet").exists()
    answered_before = {r.user_prompt for r in teacher.requests}
    # the daemon's run-failure sensor records the failed partition where an operator looks
    failure = _wait_for_failure_record(dev.opengrok_home / "logs" / "run-failures.jsonl", f"{ROUND}|chess")
    assert failure["backfill"] == backfill_id and failure["failed_steps"] == ["raw_responses"]

    teacher.refused = set()
    teacher.requests.clear()
    rerun_id = _launched(
        dev.graphql(REEXECUTE_BACKFILL, {"params": {"parentRunId": backfill_id, "strategy": "FROM_FAILURE"}}),
        "reexecutePartitionBackfill",
    )
    rerun, rerun_runs = _wait_for_backfill(shared_instance, rerun_id)

    assert _partitions(rerun_runs) == {f"{ROUND}|chess": DagsterRunStatus.SUCCESS}
    assert rerun.status == BulkActionStatus.COMPLETED_SUCCESS
    # only the failed partition's prompts reached the teacher, and the others were not re-materialised
    assert teacher.requests and all("chess" in r.user_prompt for r in teacher.requests)
    assert not answered_before & {r.user_prompt for r in teacher.requests if "chess" not in r.user_prompt}
    assert shared_instance.get_materialized_partitions(AssetKey("raw_responses")) == set(keys)
    for topic in ("volcanoes", "gardening"):
        events = shared_instance.fetch_materializations(AssetKey("raw_responses"), limit=100).records
        assert sum(event.partition_key == str(collection_partition_key(topic, ROUND)) for event in events) == 1


def test_command_line_backfill_submits_one_run_per_topic_partition(dev, shared_instance, teacher):
    round_key = "2026-11-23"
    keys = [str(collection_partition_key(topic, round_key)) for topic in ("volcanoes", "gardening")]
    submitted = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "job",
            "backfill",
            "-m",
            "opengrok_dagster.definitions",
            "-j",
            "collect_teacher_data",
            "--partitions",
            ",".join(keys),
            "--noprompt",
        ],
        cwd=REPO_ROOT,
        env=dev.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    backfill_id = submitted.stdout.split("Launched backfill job `")[1].split("`")[0]
    _, runs = _wait_for_backfill(shared_instance, backfill_id)
    assert _partitions(runs) == dict.fromkeys(keys, DagsterRunStatus.SUCCESS), dev.log.read_text()[-3000:]
    for topic in ("volcanoes", "gardening"):
        assert (
            len(pd.read_parquet(dev.opengrok_home / "assets" / "raw_responses" / round_key / f"{topic}.parquet")) == 12
        )


def test_backfill_of_a_partition_that_does_not_exist_is_refused_with_the_key(dev, shared_instance):
    missing = str(collection_partition_key("not-a-topic", ROUND))
    outcome = dev.graphql(
        LAUNCH_BACKFILL,
        {
            "params": {
                "partitionNames": [missing],
                "assetSelection": [{"path": ["prompts"]}, {"path": ["raw_responses"]}],
            }
        },
    )["launchPartitionBackfill"]
    assert outcome["__typename"] == "PartitionKeysNotFoundError"
    assert missing in outcome["message"]
