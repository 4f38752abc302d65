"""The production instance config (docker/dagster.yaml) against a real PostgreSQL server on loopback.

No Docker engine runs here, so the server is Debian's PostgreSQL started from a fresh initdb in a temp
directory (as the `postgres` user when the tests run as root); `make test` installs it."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, DagsterInvalidConfigError, QueuedRunCoordinator, materialize
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_postgres.utils import DagsterPostgresException

from assets.collection import prompts, raw_responses
from opengrok_dagster.instance import GPU_POOL, TEACHER_POOL, set_missing_pool_limits
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths, ParquetIOManager, TeacherResource
from tests.conftest import GENERATIVE_ONLY, REPO_ROOT


DOCKER_DAGSTER_YAML = REPO_ROOT / "docker" / "dagster.yaml"
ROUND = "2026-11-24"
DB_USER = "dagster"
DB_NAME = "opengrok_dagster"


def _postgres_bin_dir() -> Path:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not installed:
        pytest.fail("PostgreSQL server binaries (pg_ctl, initdb) not found: `make system-packages` installs them")
    return Path(installed[-1]).parent


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LoopbackPostgres:
    """A throwaway PostgreSQL cluster listening only on 127.0.0.1, with password (scram) auth over TCP."""

    def __init__(self):
        self.bin_dir = _postgres_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="opengrok-pg-"))
        self.data = self.root / "data"
        self.port = _free_loopback_port()
        self.password = "test-" + os.urandom(8).hex()
        # initdb and postgres refuse to run as root: run them as the `postgres` user the package creates.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> "LoopbackPostgres":
        password_file = self.root / "password"
        password_file.write_text(self.password)
        if self.as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(password_file, "postgres")
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            DB_USER,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} -c fsync=off"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        admin = psycopg2.connect(**self.connection("postgres"))
        admin.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        admin.cursor().execute(f"CREATE DATABASE {DB_NAME}")
        admin.close()
        return self

    def connection(self, database: str = DB_NAME) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "user": DB_USER, "password": self.password, "dbname": database}

    def environment(self) -> dict[str, str]:
        """The variables docker/dagster.yaml reads, as docker-compose.yml sets them for each container."""
        return {
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(self.port),
            "DAGSTER_POSTGRES_USER": DB_USER,
            "DAGSTER_POSTGRES_PASSWORD": self.password,
            "DAGSTER_POSTGRES_DB": DB_NAME,
        }

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                [*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    server = LoopbackPostgres()
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        log = server.root / "server.log"
        server.stop()
        pytest.fail(f"could not start PostgreSQL: {exc.stderr}\n{log.read_text() if log.exists() else ''}")
    yield server
    server.stop()


def _docker_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(DOCKER_DAGSTER_YAML, home / "dagster.yaml")
    return home


@pytest.fixture
def postgres_instance(postgres, tmp_path, monkeypatch):
    for name, value in postgres.environment().items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.from_config(str(_docker_home(tmp_path))) as instance:
        yield instance


def test_docker_instance_uses_postgres_for_every_storage_and_queues_runs_with_limits(postgres_instance):
    assert isinstance(postgres_instance.run_storage, PostgresRunStorage)
    assert isinstance(postgres_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(postgres_instance.schedule_storage, PostgresScheduleStorage)
    coordinator = postgres_instance.run_coordinator
    assert isinstance(coordinator, QueuedRunCoordinator)
    queue = postgres_instance.get_concurrency_config().run_queue_config
    limits = {(limit["key"], limit.get("value")): limit["limit"] for limit in queue.tag_concurrency_limits}
    assert limits[("opengrok/stage", "training")] == 1
    assert postgres_instance.get_concurrency_config().pool_config.default_pool_limit == 1
    # pools live in the event log storage: the teacher pool's slots are real rows in Postgres
    postgres_instance.event_log_storage.set_concurrency_slots("teacher", 2)
    assert postgres_instance.event_log_storage.get_concurrency_info("teacher").slot_count == 2


def test_the_daemons_pool_limits_leave_no_run_a_pool_to_create(postgres_instance):
    """A run creates a missing pool's row when its first step asks; on PostgreSQL the run that loses that race to
    another fails (dagster-io/dagster#33552; it failed a two-partition backfill of the docker/ deployment in CI).
    `opengrok pools`, which the daemon runs before it starts any run, gives both pools an explicit limit, so no step
    takes that path (Dagster creates only missing rows, or rows it derived from a changed default)."""
    storage = postgres_instance.event_log_storage
    for pool in (GPU_POOL, TEACHER_POOL):  # the database is the module's: start as a new deployment does
        storage.delete_concurrency_limit(pool)
    assert set_missing_pool_limits(postgres_instance) == {GPU_POOL: 1, TEACHER_POOL: 1}
    limits = {pool.name: (pool.limit, pool.from_default) for pool in storage.get_pool_limits()}
    assert limits == {GPU_POOL: (1, False), TEACHER_POOL: (1, False)}
    # an operator's limit survives the daemon's next start
    storage.set_concurrency_slots(TEACHER_POOL, 3)
    assert set_missing_pool_limits(postgres_instance) == {}
    assert storage.get_concurrency_info(TEACHER_POOL).slot_count == 3


def test_partition_materialised_on_postgres_is_visible_to_another_process_instance(
    postgres, postgres_instance, tmp_path, loopback_teacher
):
    postgres_instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
    partition = collection_partition_key("climate", ROUND)
    result = materialize(
        [prompts, raw_responses],
        instance=postgres_instance,
        partition_key=partition,
        resources={
            "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
            "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
            "teacher": TeacherResource(mode="remote", base_url=loopback_teacher.base_url, model="grok-test"),
        },
        run_config=GENERATIVE_ONLY,
    )
    assert result.success
    assert len(pd.read_parquet(tmp_path / "assets" / "raw_responses" / ROUND / "climate.parquet")) == 12
    # A second instance from the same config (another container: webserver, daemon) sees the run,
    # the materialised partition and the check results through Postgres alone.
    with DagsterInstance.from_config(str(_docker_home(tmp_path / "other"))) as other:
        assert other.get_run_by_id(result.run_id).is_success
        assert other.get_materialized_partitions(AssetKey("raw_responses")) == {partition}
        assert other.get_dynamic_partitions(topic_partitions.name) == ["climate"]
        event = other.get_latest_materialization_event(AssetKey("raw_responses"))
        assert event.asset_materialization.metadata["dagster/row_count"].value == 12
    with psycopg2.connect(**postgres.connection()) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT count(*) FROM runs WHERE run_id = %s", (result.run_id,))
        assert cursor.fetchone()[0] == 1
    connection.close()


def test_missing_connection_variable_names_the_variable(postgres, tmp_path, monkeypatch):
    for name, value in postgres.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_POSTGRES_PASSWORD")
    with pytest.raises(DagsterInvalidConfigError) as error:
        DagsterInstance.from_config(str(_docker_home(tmp_path)))
    assert "DAGSTER_POSTGRES_PASSWORD" in str(error.value)


def test_wrong_password_fails_with_the_servers_reason_after_retries(postgres, tmp_path, monkeypatch):
    for name, value in postgres.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_POSTGRES_PASSWORD", "not-the-password")
    with pytest.raises(DagsterPostgresException) as error:
        DagsterInstance.from_config(str(_docker_home(tmp_path)))
    assert "password authentication failed" in str(error.value.__cause__)
