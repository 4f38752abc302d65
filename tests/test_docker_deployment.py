"""The docker/ deployment started for real from the images `make docker-images` builds: a Docker engine of the
test's own (docker/dockerd-private.sh), PostgreSQL, the code server, the webserver and the daemon from
docker/docker-compose.yml with its host-network variant (every port on 127.0.0.1), driven through the
webserver's GraphQL API as the UI drives it. The runs collect from the embedded teacher baked into the image.

Compose 1.29 (Debian's) does not know the Compose Specification's top-level `name`, so the test hands it the
same file without that key; everything else is read as written. `make docker-test` runs this module."""

import json
import secrets
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import httpx
import psycopg2
import pytest
import yaml

from opengrok_dagster.partitions import collection_partition_key
from tests.conftest import COMPOSE_RESET, DOCKER_IMAGE, DOCKER_POSTGRES_IMAGE, GENERATIVE_ONLY, REPO_ROOT, load_compose


pytestmark = [pytest.mark.integration, pytest.mark.deployment]

DOCKER = REPO_ROOT / "docker"
ROUND = "2026-11-24"
# A small generative grid (8 prompts a topic, no annotation prompts: no posts are loaded here).
RUN_CONFIG = {
    "ops": {
        "prompts": {
            "config": {
                **GENERATIVE_ONLY["ops"]["prompts"]["config"],
                "base_per_topic": 4,
                "style_per_topic": 2,
                "adversarial_per_topic": 2,
            }
        }
    }
}
# Short answers, one request at a time (so a restart falls between answers), and prices and a budget, so the
# response store keeps its spend ledger: what each run paid, per prompt.
TEACHER_ENVIRONMENT = {
    "OPENGROK_TEACHER_MAX_TOKENS": "48",
    "OPENGROK_TEACHER_CONCURRENCY": "1",
    "OPENGROK_TEACHER_PROMPT_PRICE": "1.0",
    "OPENGROK_TEACHER_COMPLETION_PRICE": "1.0",
    "OPENGROK_TEACHER_DAILY_BUDGET_USD": "10",
}
LOCATION = {"repositoryLocationName": "opengrok", "repositoryName": "__repository__"}
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str], env: dict, timeout: float = 300) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def _files_for_compose_v1(directory: Path, variants: tuple[str, ...]) -> list[str]:
    """docker-compose.yml, its host-network variant and the given `variants` as compose 1.29 can read them: without
    the top-level `name` (the project name is passed with -p), with each `!reset` applied (the key dropped from the
    base), and with relative paths made absolute (compose reads them against the first file's directory)."""
    base = load_compose(DOCKER / "docker-compose.yml")
    base.pop("name")
    overrides = [load_compose(DOCKER / name) for name in ("docker-compose.host-network.yml", *variants)]
    for override in overrides:
        for name, service in override["services"].items():
            for key in [key for key, value in service.items() if value == COMPOSE_RESET]:
                del service[key]
                base["services"][name].pop(key, None)
            service["volumes"] = [_absolute_source(volume) for volume in service.get("volumes", [])]
    for service in base["services"].values():
        if "build" in service:
            service["build"]["context"] = str(REPO_ROOT)  # relative to the original file
    files = []
    for index, content in enumerate([base, *overrides]):
        (directory / f"compose-{index}.yml").write_text(yaml.safe_dump(content, sort_keys=False))
        files += ["-f", str(directory / f"compose-{index}.yml")]
    return files


def _absolute_source(volume: str) -> str:
    return str(DOCKER / volume[2:]) if volume.startswith("./") else volume


class Deployment:
    """One compose project on free loopback ports; `down` removes its containers and volumes by id."""

    def __init__(self, engine_env: dict, directory: Path, variants: tuple[str, ...] = ()):
        self.project = "opengrok-test-" + secrets.token_hex(4)
        self.postgres_port, self.grpc_port, self.webserver_port = (_free_loopback_port() for _ in range(3))
        self.password = "test-" + secrets.token_hex(8)
        self.env = {
            **engine_env,
            "OPENGROK_IMAGE": DOCKER_IMAGE,
            "OPENGROK_POSTGRES_IMAGE": DOCKER_POSTGRES_IMAGE,
            "DAGSTER_POSTGRES_PASSWORD": self.password,
            "OPENGROK_POSTGRES_PORT": str(self.postgres_port),
            "OPENGROK_GRPC_PORT": str(self.grpc_port),
            "OPENGROK_WEBSERVER_PORT": str(self.webserver_port),
            **TEACHER_ENVIRONMENT,
        }
        self.compose_files = _files_for_compose_v1(directory, variants)
        self.graphql_url = f"http://127.0.0.1:{self.webserver_port}/graphql"

    def compose(self, *args: str, timeout: float = 600) -> str:
        return _run(["docker-compose", "-p", self.project, *self.compose_files, *args], self.env, timeout)

    def docker(self, *args: str, timeout: float = 300) -> str:
        return _run(["docker", *args], self.env, timeout)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def up(self) -> None:
        self.compose("up", "-d", "--no-build", timeout=900)
        _wait_for_location(self)

    def location_loaded(self) -> bool:
        try:
            data = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name "
                "locationOrLoadError { __typename } } } } }"
            )
        except (httpx.HTTPError, AssertionError):
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return any(
            e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            for e in entries
        )

    def graphql(self, query: str, **variables) -> dict:
        response = httpx.post(self.graphql_url, json={"query": query, "variables": variables}, timeout=60)
        assert response.status_code == 200, f"GraphQL answered {response.status_code}: {response.text[-2000:]}"
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def volume_path(self, volume: str) -> Path:
        [mountpoint] = json.loads(self.docker("volume", "inspect", f"{self.project}_{volume}"))
        return Path(mountpoint["Mountpoint"])

    def logs(self) -> str:
        done = subprocess.run(
            ["docker-compose", "-p", self.project, *self.compose_files, "logs", "--no-color", "--tail", "40"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.stdout[-6000:]

    def down(self) -> None:
        """Every container of the project removed by id (the services', and any run container that mounts the
        project's volumes), then its volumes."""
        ids = self.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}").split()
        ids += self.docker("ps", "-aq", "--filter", f"volume={self.project}_opengrok-home").split()
        for container in dict.fromkeys(ids):
            subprocess.run(["docker", "rm", "-f", "-v", container], env=self.env, capture_output=True, timeout=300)
        volumes = self.docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}")
        named = self.docker("volume", "ls", "-q", "--filter", f"name={self.project}_")
        for volume in dict.fromkeys(volumes.split() + named.split()):
            subprocess.run(["docker", "volume", "rm", volume], env=self.env, capture_output=True, timeout=300)


def _wait_for_location(deployed: Deployment, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if deployed.location_loaded():
            return
        time.sleep(3)
    raise AssertionError(f"the webserver did not load the code location in {timeout} s:\n{deployed.logs()}")


def _wait_for_healthy(deployed: Deployment, service: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = deployed.docker("inspect", "-f", "{{.State.Health.Status}}", deployed.container(service)).strip()
        if health == "healthy":
            return
        time.sleep(2)
    raise AssertionError(f"{service} not healthy {timeout} s after its restart:\n{deployed.logs()}")


@pytest.fixture(scope="module")
def deployment(engine, tmp_path_factory):
    deployed = Deployment(engine, tmp_path_factory.mktemp("compose"))
    try:
        deployed.up()
        yield deployed
    finally:
        deployed.down()


ADD_PARTITION = """
mutation($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename ... on PythonError { message } ... on UnauthorizedError { message }
  }
}"""

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""

RUN_STATUS = """
query($runId: ID!) { runOrError(runId: $runId) { ... on Run { status tags { key value } } } }"""

RELOAD = """
mutation($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) { __typename ... on PythonError { message } }
}"""

TERMINATE = """
mutation($runId: String!) {
  terminateRun(runId: $runId, terminatePolicy: MARK_AS_CANCELED_IMMEDIATELY) {
    __typename ... on PythonError { message } ... on TerminateRunFailure { message }
  }
}"""

REEXECUTE = """
mutation($parent: String!) {
  launchRunReexecution(reexecutionParams: { parentRunId: $parent, strategy: FROM_FAILURE }) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""

MATERIALIZATIONS = """
query($partition: String!) {
  assetOrError(assetKey: { path: ["raw_responses"] }) {
    ... on Asset {
      definition { groupName partitionDefinition { type } }
      assetMaterializations(partitions: [$partition]) { runId partition metadataEntries { label
        ... on IntMetadataEntry { intValue } } }
    }
  }
}"""


def _collect(deployed: Deployment, topic: str) -> tuple[str, str]:
    """Make sure the topic partition exists and launch `collect_teacher_data` for it through GraphQL; the run id and key."""
    added = deployed.graphql(ADD_PARTITION, selector=LOCATION, name="topics", key=topic)["addDynamicPartition"]
    # the topics sensor may have added it from the catalogue already
    assert added["__typename"] in {"AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"}, added
    key = collection_partition_key(topic, ROUND)
    # a multi-partition key travels as the whole key plus one tag per dimension, as the UI sends it
    tags = [{"key": "dagster/partition", "value": str(key)}] + [
        {"key": f"dagster/partition/{dimension}", "value": value} for dimension, value in key.keys_by_dimension.items()
    ]
    params = {
        "selector": {**LOCATION, "jobName": "collect_teacher_data"},
        "runConfigData": RUN_CONFIG,
        "executionMetadata": {"tags": tags},
    }
    launched = deployed.graphql(LAUNCH_RUN, params=params)["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"], str(key)


def _wait_for(deployed: Deployment, run_id: str, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = deployed.graphql(RUN_STATUS, runId=run_id)["runOrError"]["status"]
        if status in FINISHED:
            return status
        time.sleep(5)
    raise AssertionError(f"run {run_id} still not finished after {timeout} s:\n{deployed.logs()}")


# One row per prompt (its primary key): rewritten only if the prompt were requested again.
ANSWERED = "SELECT prompt_id, request_id, collected_at FROM responses WHERE topic = ? AND error IS NULL"


def _store(deployed: Deployment) -> sqlite3.Connection:
    """The response store in the opengrok-home volume, read-only."""
    return sqlite3.connect(f"file:{deployed.volume_path('opengrok-home') / 'responses.sqlite'}?mode=ro", uri=True)


def _answered(deployed: Deployment, topic: str) -> list[tuple]:
    try:
        with closing(_store(deployed)) as store:
            return store.execute(ANSWERED, (topic,)).fetchall()
    except sqlite3.OperationalError:  # no store yet: nothing answered
        return []


def test_a_partition_collected_through_the_webserver_is_in_postgres_and_the_catalog(deployment):
    run_id, partition = _collect(deployment, "climate")
    assert _wait_for(deployment, run_id) == "SUCCESS", deployment.logs()
    with psycopg2.connect(
        host="127.0.0.1", port=deployment.postgres_port, user="dagster", password=deployment.password, dbname="dagster"
    ) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,))
        assert cursor.fetchone() == ("SUCCESS",)
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = "
            "'ASSET_MATERIALIZATION' AND asset_key = %s",
            (run_id, '["raw_responses"]'),
        )
        assert cursor.fetchone()[0] == 1
    connection.close()
    asset = deployment.graphql(MATERIALIZATIONS, partition=partition)["assetOrError"]
    assert asset["definition"]["groupName"] == "acquisition"
    [materialization] = asset["assetMaterializations"]
    assert materialization["runId"] == run_id
    rows = {e["label"]: e.get("intValue") for e in materialization["metadataEntries"]}["dagster/row_count"]
    assert rows == len(_answered(deployment, "climate")) == 8


@pytest.mark.timing  # waits for the run to start and for the services to come back, by the clock
def test_a_run_cut_off_by_restarting_the_daemon_and_code_server_is_reexecuted_without_paying_twice(deployment):
    run_id, partition = _collect(deployment, "football")
    deadline = time.monotonic() + 600
    answered = []
    while time.monotonic() < deadline and not answered:
        answered = _answered(deployment, "football")
        time.sleep(0.5)
    assert answered, f"no response stored for football within 600 s:\n{deployment.logs()}"
    # Both stopped at once, without a grace period (-t 0), the way a host reboot or an OOM kill stops them.
    deployment.docker("restart", "-t", "0", deployment.container("dagster_daemon"), deployment.container("user_code"))
    # The run's worker died with the code server. The DefaultRunLauncher cannot check run workers, so the run
    # stays STARTED until someone acts: force-terminate it and re-execute it from the failure, as from the UI.
    _wait_for_healthy(deployment, "user_code")
    # the UI's "Reload": the webserver reconnects to the restarted code server
    reloaded = deployment.graphql(RELOAD, name=LOCATION["repositoryLocationName"])["reloadRepositoryLocation"]
    assert reloaded["__typename"] == "WorkspaceLocationEntry", reloaded
    _wait_for_location(deployment)
    assert deployment.graphql(RUN_STATUS, runId=run_id)["runOrError"]["status"] == "STARTED"
    terminated = deployment.graphql(TERMINATE, runId=run_id)["terminateRun"]
    assert terminated["__typename"] == "TerminateRunSuccess", terminated
    reexecuted = deployment.graphql(REEXECUTE, parent=run_id)["launchRunReexecution"]
    assert reexecuted["__typename"] == "LaunchRunSuccess", reexecuted
    retry_id = reexecuted["run"]["runId"]
    assert _wait_for(deployment, retry_id) == "SUCCESS", deployment.logs()
    final = _answered(deployment, "football")
    with closing(_store(deployment)) as store:
        paid = store.execute(
            "SELECT prompt_id, run_id, count(*) FROM spend WHERE partition = ? AND actual_usd IS NOT NULL "
            "GROUP BY prompt_id",
            (partition,),
        ).fetchall()
    assert len(answered) < len(final) == 8, "the restart did not fall between the first and the last answer"
    assert set(answered) <= set(final), "an answer stored before the restart was requested again"
    assert sorted(prompt for prompt, _, _ in paid) == sorted(prompt for prompt, _, _ in final)
    assert {count for _, _, count in paid} == {1}, "a prompt was paid for twice"
    assert {run for _, run, _ in paid} == {run_id, retry_id}, "each run paid only for what it received"
