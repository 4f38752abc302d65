"""One container per run: the docker/ deployment with docker-compose.docker-launcher.yml, whose daemon starts each
run in a container of its own through the engine's socket (dagster-docker's DockerRunLauncher). A backfill of two
topic partitions, launched through the webserver's GraphQL API as the UI's partition picker launches it, runs as two
containers, and the `teacher` pool still lets one `raw_responses` step run at a time across them.

Same engine (tests/conftest.py), images and helpers as tests/test_docker_deployment.py; `make docker-test` runs both modules."""

import json
import subprocess
import time
from contextlib import closing

import psycopg2
import pytest

from opengrok_dagster.partitions import collection_partition_key
from tests.conftest import DOCKER_IMAGE
from tests.test_docker_deployment import ADD_PARTITION, LOCATION, ROUND, RUN_CONFIG, Deployment, _answered


pytestmark = [pytest.mark.integration, pytest.mark.deployment]

TOPICS = ("cooking", "travel")
# Four prompts a topic: enough to see each run's teacher step, short enough for two runs one after the other.
BACKFILL_CONFIG = {
    "ops": {
        "prompts": {
            "config": {
                **RUN_CONFIG["ops"]["prompts"]["config"],
                "base_per_topic": 2,
                "style_per_topic": 1,
                "adversarial_per_topic": 1,
            }
        }
    }
}

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message }
  }
}"""

BACKFILL_RUNS = """
query($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    ... on PartitionBackfill { status runs(limit: 10) { runId status tags { key value } } }
  }
}"""


@pytest.fixture(scope="module")
def deployment(engine, tmp_path_factory):
    directory = tmp_path_factory.mktemp("compose")
    deployed = Deployment(engine, directory, variants=("docker-compose.docker-launcher.yml",))
    # the run containers join the host network, mount this project's volumes and reach the test's own engine
    deployed.env.update(
        OPENGROK_RUN_NETWORK="host",
        OPENGROK_VOLUME_PREFIX=deployed.project,
        OPENGROK_DOCKER_SOCKET=engine["DOCKER_HOST"].removeprefix("unix://"),
    )
    try:
        deployed.up()
        yield deployed
    finally:
        deployed.down()


def _wait_for_backfill(deployed: Deployment, backfill_id: str, runs: int, timeout: float = 1500) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backfill = deployed.graphql(BACKFILL_RUNS, backfillId=backfill_id)["partitionBackfillOrError"]
        launched = backfill["runs"]
        if len(launched) == runs and all(run["status"] in {"SUCCESS", "FAILURE", "CANCELED"} for run in launched):
            return launched
        time.sleep(5)
    raise AssertionError(f"backfill {backfill_id} not finished after {timeout} s:\n{deployed.logs()}")


def _query(deployed: Deployment, sql: str, *parameters) -> list[tuple]:
    """Rows from the deployment's PostgreSQL, the instance's storage."""
    with closing(
        psycopg2.connect(
            host="127.0.0.1", port=deployed.postgres_port, user="dagster", password=deployed.password, dbname="dagster"
        )
    ) as connection:
        cursor = connection.cursor()
        cursor.execute(sql, parameters)
        return cursor.fetchall()


def _teacher_steps(deployed: Deployment, run_ids: list[str]) -> dict[str, tuple[float, float]]:
    """When each run's raw_responses step started and succeeded, from the event log."""
    rows = _query(
        deployed,
        "SELECT run_id, dagster_event_type, extract(epoch FROM timestamp) FROM event_logs "
        "WHERE step_key = 'raw_responses' AND dagster_event_type IN ('STEP_START', 'STEP_SUCCESS') "
        "AND run_id = ANY(%s)",
        run_ids,
    )
    events = {(run_id, kind): float(at) for run_id, kind, at in rows}
    return {run_id: (events[run_id, "STEP_START"], events[run_id, "STEP_SUCCESS"]) for run_id in run_ids}


def _container_logs(deployed: Deployment, container_id: str) -> str:
    done = subprocess.run(
        ["docker", "logs", "--tail", "60", container_id],
        env=deployed.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    return done.stdout[-8000:]


def _container(deployed: Deployment, container_id: str) -> dict:
    [inspected] = json.loads(deployed.docker("inspect", container_id))
    return inspected


def test_a_backfill_of_two_partitions_runs_in_two_containers_one_teacher_step_at_a_time(deployment):
    for topic in TOPICS:
        added = deployment.graphql(ADD_PARTITION, selector=LOCATION, name="topics", key=topic)["addDynamicPartition"]
        assert added["__typename"] in {"AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"}, added
    keys = [str(collection_partition_key(topic, ROUND)) for topic in TOPICS]
    launched = deployment.graphql(
        LAUNCH_BACKFILL,
        params={
            "partitionNames": keys,
            "assetSelection": [{"path": ["prompts"]}, {"path": ["raw_responses"]}],
            "runConfigData": BACKFILL_CONFIG,
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched

    runs = _wait_for_backfill(deployment, launched["backfillId"], runs=2)
    tags = {run["runId"]: {tag["key"]: tag["value"] for tag in run["tags"]} for run in runs}
    run_logs = "\n".join(_container_logs(deployment, run_tags["docker/container_id"]) for run_tags in tags.values())
    assert {run["status"] for run in runs} == {"SUCCESS"}, run_logs
    assert sorted(run_tags["dagster/partition"] for run_tags in tags.values()) == sorted(keys)
    # the daemon limited both pools before it launched a run: had a run created them (the path that fails the
    # loser of two runs racing to it on PostgreSQL, dagster-io/dagster#33552), they would say "default limit"
    limits = _query(deployment, 'SELECT concurrency_key, "limit", using_default_limit FROM concurrency_limits')
    assert sorted(limits) == [("gpu", 1, False), ("teacher", 1, False)]

    # two containers, one per run: the launcher's tags name them, and each carries its run's id and the image
    containers = {run_id: _container(deployment, run_tags["docker/container_id"]) for run_id, run_tags in tags.items()}
    assert len({container["Id"] for container in containers.values()}) == 2
    for run_id, container in containers.items():
        assert container["Config"]["Labels"]["dagster/run_id"] == run_id
        assert container["Config"]["Image"] == DOCKER_IMAGE == tags[run_id]["dagster/image"]
        assert container["HostConfig"]["NetworkMode"] == "host"
        assert container["State"]["ExitCode"] == 0
    # the two containers ran at the same time, yet their teacher steps did not: the `teacher` pool held one back
    lives = sorted(
        (container["State"]["StartedAt"], container["State"]["FinishedAt"]) for container in containers.values()
    )
    assert lives[1][0] < lives[0][1], f"the runs did not overlap: {lives}"
    first, second = sorted(_teacher_steps(deployment, list(tags)).values())  # (start, end) of each
    assert first[1] <= second[0], "two raw_responses steps collected at once despite the teacher pool"

    # each partition's answers are in the response store of the shared volume
    assert [len(_answered(deployment, topic)) for topic in TOPICS] == [4, 4]
