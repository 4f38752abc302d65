"""docker/ without a Docker engine: the compose file against the Compose Specification schema, the instance
config against Dagster's schema, and every file, variable, host and port they refer to."""

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config

from tests.conftest import COMPOSE_RESET, REPO_ROOT, load_compose


DOCKER = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
DAGSTER_SERVICES = ("user_code", "dagster_webserver", "dagster_daemon")
# the daemon limits the gpu and teacher pools before it starts any run (opengrok_dagster/instance.py says why)
DAEMON_SHELL_COMMAND = "opengrok pools && exec dagster-daemon run -w /opt/dagster/workspace.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _validate_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_follows_the_compose_specification(tmp_path):
    valid = _validate_compose(COMPOSE_FILE)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace("    restart: unless-stopped", "    restart_policy: sometimes", 1)
    )
    rejected = _validate_compose(broken)
    assert rejected.returncode != 0 and "restart_policy" in rejected.stdout + rejected.stderr


def test_compose_runs_postgres_webserver_daemon_and_the_code_server(compose):
    services = compose["services"]
    assert set(services) == {"postgresql", *DAGSTER_SERVICES}
    # the registry image by default; OPENGROK_POSTGRES_IMAGE selects the one docker/build-offline.sh builds
    assert services["postgresql"]["image"] == "${OPENGROK_POSTGRES_IMAGE:-postgres:16-bookworm}"
    commands = {name: services[name]["command"] for name in DAGSTER_SERVICES}
    assert commands["dagster_webserver"][0] == "dagster-webserver"
    assert commands["dagster_daemon"] == ["sh", "-c", DAEMON_SHELL_COMMAND]
    assert commands["user_code"][:3] == ["dagster", "code-server", "start"]
    for name in ("dagster_webserver", "dagster_daemon"):
        assert services[name]["depends_on"]["postgresql"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["user_code"]["condition"] == "service_healthy"
    # the UI is published on loopback only: the deployment adds its own proxy and auth in front
    assert services["dagster_webserver"]["ports"] == ["127.0.0.1:3000:3000"]


def test_every_dagster_container_shares_the_image_volumes_and_instance_settings(compose):
    services = compose["services"]
    builds = {yaml.safe_dump(services[name]["build"]) for name in DAGSTER_SERVICES}
    assert len(builds) == 1 and len({services[name]["image"] for name in DAGSTER_SERVICES}) == 1
    build = services["user_code"]["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == REPO_ROOT and (context / build["dockerfile"]).is_file()
    for name in DAGSTER_SERVICES:
        mounts = dict(volume.split(":", 1) for volume in services[name]["volumes"])
        assert mounts == {
            "opengrok-home": "/opt/opengrok/home",
            "dagster-storage": "/opt/dagster/dagster_home/storage",
        }
        assert set(mounts) <= set(compose["volumes"])


def _instance_variables() -> set[str]:
    return set(re.findall(r"\{env:\s*(\w+)\}", (DOCKER / "dagster.yaml").read_text()))


def test_compose_sets_every_variable_the_instance_config_reads(compose):
    needed = _instance_variables()
    assert needed == {
        "DAGSTER_POSTGRES_HOST",
        "DAGSTER_POSTGRES_PORT",
        "DAGSTER_POSTGRES_USER",
        "DAGSTER_POSTGRES_PASSWORD",
        "DAGSTER_POSTGRES_DB",
    }
    for name in DAGSTER_SERVICES:
        environment = compose["services"][name]["environment"]
        assert needed <= set(environment), f"{name} lacks {needed - set(environment)}"
        assert environment["DAGSTER_POSTGRES_HOST"] == "postgresql"
        assert environment["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    # the password is never written into the file: it must come from the operator's environment
    assert compose["services"]["user_code"]["environment"]["DAGSTER_POSTGRES_PASSWORD"].startswith(
        "${DAGSTER_POSTGRES_PASSWORD:?"
    )


def test_workspace_points_at_the_code_server_service_and_port(compose):
    [location] = yaml.safe_load((DOCKER / "workspace.yaml").read_text())["load_from"]
    server = location["grpc_server"]
    command = compose["services"]["user_code"]["command"]
    environment = compose["x-dagster-environment"]
    assert environment[server["host"]["env"]] in compose["services"]
    assert environment[server["port"]["env"]] == command[command.index("-p") + 1]
    assert command[command.index("-m") + 1] == "opengrok_dagster.definitions"
    assert server["location_name"] == command[command.index("--location-name") + 1]


def test_host_network_variant_keeps_every_service_on_loopback():
    override = load_compose(DOCKER / "docker-compose.host-network.yml")
    services = override["services"]
    assert set(services) == {"postgresql", *DAGSTER_SERVICES}
    assert {service["network_mode"] for service in services.values()} == {"host"}
    assert services["dagster_webserver"]["ports"] == COMPOSE_RESET  # nothing published beside the host network
    assert services["postgresql"]["environment"]["POSTGRES_LISTEN_ADDRESSES"] == "127.0.0.1"
    for name in ("user_code", "dagster_webserver"):
        command = services[name]["command"]
        assert command[command.index("-h") + 1] == "127.0.0.1"
    grpc_port = services["user_code"]["command"][services["user_code"]["command"].index("-p") + 1]
    environment = override["x-host-network-environment"]
    assert environment["DAGSTER_GRPC_HOST"] == environment["DAGSTER_POSTGRES_HOST"] == "127.0.0.1"
    assert environment["DAGSTER_GRPC_PORT"] == grpc_port
    assert environment["DAGSTER_POSTGRES_PORT"] == services["postgresql"]["environment"]["PGPORT"]


LAUNCHER_VARIANT = DOCKER / "docker-compose.docker-launcher.yml"
LAUNCHER_INSTANCE = DOCKER / "dagster.docker-launcher.yaml"


def _defaults_applied(text: str) -> str:
    """A compose value as compose reads it with no variable set: each ${NAME:-default} becomes its default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_docker_launcher_instance_differs_from_the_deployments_only_in_its_run_launcher(tmp_path, monkeypatch):
    deployment = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    variant = yaml.safe_load(LAUNCHER_INSTANCE.read_text())
    launcher = variant.pop("run_launcher")
    deployment.pop("run_launcher")
    assert variant == deployment
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    for variable in _instance_variables():
        monkeypatch.setenv(variable, "5432" if variable.endswith("PORT") else "x")
    shutil.copy(LAUNCHER_INSTANCE, tmp_path / "dagster.yaml")
    assert _instance_config(tmp_path)["run_launcher"]["config"]["env_vars"] == launcher["config"]["env_vars"]


def test_docker_launcher_hands_each_run_the_environment_the_steps_read(compose):
    """Every variable user_code runs the steps with, except where it reaches the code server, is passed on to the
    run containers, and the daemon (which launches them) has each one."""
    env_vars = yaml.safe_load(LAUNCHER_INSTANCE.read_text())["run_launcher"]["config"]["env_vars"]
    step_environment = set(compose["services"]["user_code"]["environment"]) - {
        "DAGSTER_GRPC_HOST",
        "DAGSTER_GRPC_PORT",
    }
    assert set(env_vars) == step_environment - {"DAGSTER_HOME"}  # DAGSTER_HOME: the image's own
    assert step_environment <= set(compose["services"]["dagster_daemon"]["environment"])


def test_docker_launcher_variant_gives_runs_the_services_volumes_and_the_daemon_the_socket(compose):
    valid = _validate_compose(LAUNCHER_VARIANT)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    override = yaml.safe_load(LAUNCHER_VARIANT.read_text())
    services = override["services"]
    instance = f"./{LAUNCHER_INSTANCE.name}:/opt/dagster/dagster_home/dagster.yaml:ro"
    socket = "${OPENGROK_DOCKER_SOCKET:-/var/run/docker.sock}:/var/run/docker.sock"
    assert services["user_code"]["volumes"] == [instance]
    assert services["dagster_webserver"]["volumes"] == services["dagster_daemon"]["volumes"] == [instance, socket]
    # the run containers mount, by name, the volumes the services mount, at the same paths
    context = json.loads(_defaults_applied(services["user_code"]["environment"]["DAGSTER_CONTAINER_CONTEXT"]))
    run_mounts = dict(volume.rsplit(":", 1) for volume in context["docker"]["container_kwargs"]["volumes"])
    names = {key: _defaults_applied(volume["name"]) for key, volume in override["volumes"].items()}
    service_mounts = dict(volume.split(":", 1) for volume in compose["services"]["user_code"]["volumes"])
    assert run_mounts == {names[key]: path for key, path in service_mounts.items()}
    # with the defaults, those are the names compose gives the base file's volumes (project `opengrok`)
    assert set(names.values()) == {f"{compose['name']}_{key}" for key in service_mounts}
    assert context["docker"]["networks"] == [f"{compose['name']}_default"]
    image = services["user_code"]["environment"]["DAGSTER_CONTAINER_IMAGE"]
    assert image == compose["services"]["user_code"]["image"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_copies_only_files_that_exist_and_installs_the_configs_it_names(compose):
    instructions = _dockerfile_instructions()
    copies = [shlex.split(argument) for instruction, argument in instructions if instruction == "COPY"]
    assert copies
    for *sources, _ in copies:
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    destinations = {sources[-1]: target for *sources, target in copies}
    assert destinations["docker/dagster.yaml"] == "${DAGSTER_HOME}/dagster.yaml"
    workspace_flag = compose["services"]["dagster_webserver"]["command"]
    assert destinations["docker/workspace.yaml"] == workspace_flag[workspace_flag.index("-w") + 1]


def test_dockerfile_is_cpu_by_default_with_the_projects_torch_pin():
    instructions = _dockerfile_instructions()
    args = dict(
        argument.split("=", 1) for instruction, argument in instructions if instruction == "ARG" and "=" in argument
    )
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert ("FROM", "${BASE_IMAGE}") in instructions
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={args['TORCH_VERSION']}" in dependencies
    installed_dagster = __import__("dagster").__version__.split(".")
    # dagster 1.N pairs with its libraries at 0.(N+16): the image installs the line matching pyproject's dagster
    assert f"dagster-postgres==0.{int(installed_dagster[1]) + 16}.*" in args["DAGSTER_DEPLOY_PACKAGES"]


def _instance_config(home: Path) -> dict:
    return dagster_instance_config(str(home))[0]


def test_instance_config_passes_dagsters_schema_with_postgres_queue_and_limits(tmp_path, monkeypatch):
    for variable in _instance_variables():
        monkeypatch.setenv(variable, "5432" if variable.endswith("PORT") else "x")
    shutil.copy(DOCKER / "dagster.yaml", tmp_path / "dagster.yaml")
    config = _instance_config(tmp_path)
    assert set(config["storage"]) == {"postgres"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "opengrok/stage", "value": "training", "limit": 1} in limits
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["telemetry"]["enabled"] is False


def test_the_local_instance_has_the_same_pools_as_the_deployment(tmp_path):
    """`opengrok run` and `make dev` open the instance opengrok writes: the gpu and teacher pools hold there too."""
    from dagster import DagsterInstance

    from opengrok_dagster.instance import POOLS, write_local_instance_config

    assert yaml.safe_load((DOCKER / "dagster.yaml").read_text())["concurrency"]["pools"] == POOLS
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # what earlier versions wrote: upgraded
    write_local_instance_config(tmp_path)
    with DagsterInstance.from_config(str(tmp_path)) as local:
        assert local.get_concurrency_config().pool_config.default_pool_limit == 1
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")  # someone's own file is left alone
    write_local_instance_config(tmp_path)
    assert (tmp_path / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("max_concurrent_runs: 4", "max_concurrent_runs: four"), "concurrency:runs:max_concurrent_runs"),
        (("granularity: op", "granularity: step"), "granularity"),
        (("run_monitoring:", "run_monitor:"), "run_monitor"),
    ],
    ids=["wrong-type", "wrong-value", "unknown-key"],
)
def test_malformed_instance_config_names_the_field(tmp_path, change, message):
    (tmp_path / "dagster.yaml").write_text((DOCKER / "dagster.yaml").read_text().replace(*change))
    with pytest.raises(DagsterInvalidConfigError) as error:
        _instance_config(tmp_path)
    assert message in str(error.value)


def test_instance_config_that_is_not_yaml_names_the_file_and_line(tmp_path):
    (tmp_path / "dagster.yaml").write_text(
        (DOCKER / "dagster.yaml").read_text().replace("limit: 1\n", "limit: [1\n", 1)
    )
    with pytest.raises(yaml.YAMLError) as error:
        _instance_config(tmp_path)
    assert "dagster.yaml" in str(error.value) and "line" in str(error.value)


def test_build_context_leaves_out_local_state_and_the_secrets_file():
    ignored = set((DOCKER / "Dockerfile.dockerignore").read_text().split())
    assert {".venv", ".opengrok", ".git", "docker/.env"} <= ignored


def test_the_instance_limits_reach_the_runs_and_steps_they_are_written_for():
    """A limit on a tag or pool that nothing carries is dead config: training runs must carry the tag that
    the one-training-run limit matches, collection must take a slot of the teacher pool, and the fine-tunes and
    the evaluation a slot of the gpu pool."""
    from assets.collection import raw_responses
    from assets.evaluation import eval_report
    from assets.training import lora_checkpoint
    from opengrok_dagster.instance import GPU_POOL, TEACHER_POOL
    from opengrok_dagster.jobs import fine_tune_job

    assert (lora_checkpoint.op.pool, eval_report.op.pool, GPU_POOL) == ("gpu", "gpu", "gpu")
    assert TEACHER_POOL == "teacher"

    assert fine_tune_job.tags.get("opengrok/stage") == "training", (
        "tag the fine-tune job's runs: define_asset_job(..., tags={'opengrok/stage': 'training'})"
    )
    assert raw_responses.op.pool == "teacher", "declare the collecting asset in the pool: @asset(pool='teacher', ...)"


def test_kubernetes_manifests_run_the_compose_services_with_the_same_instance_and_workspace(compose):
    """docker/kustomization.yaml: every resource file exists, the instance and workspace are the compose files,
    and each Dagster container runs the compose service's command with the generated environment."""
    kustomization = yaml.safe_load((DOCKER / "kustomization.yaml").read_text())
    manifests = [doc for path in kustomization["resources"] for doc in yaml.safe_load_all((DOCKER / path).read_text())]
    [instance] = [g for g in kustomization["configMapGenerator"] if g["name"] == "opengrok-dagster-instance"]
    assert instance["files"] == ["dagster.yaml", "workspace.yaml"]
    [environment] = [g for g in kustomization["configMapGenerator"] if g["name"] == "opengrok-environment"]
    variables = dict(line.split("=", 1) for line in environment["literals"])
    containers = {
        c["name"]: c
        for m in manifests
        if m["kind"] in {"Deployment", "StatefulSet"}
        for c in m["spec"]["template"]["spec"]["containers"]
    }
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    assert variables["DAGSTER_GRPC_HOST"] in services and variables["DAGSTER_POSTGRES_HOST"] in services
    for container, service in (
        ("user-code", "user_code"),
        ("webserver", "dagster_webserver"),
        ("daemon", "dagster_daemon"),
    ):
        assert containers[container]["command"][:3] == compose["services"][service]["command"][:3]
        assert containers[container]["envFrom"] == [{"configMapRef": {"name": "opengrok-environment"}}]
    grpc = containers["user-code"]["command"]
    assert grpc[grpc.index("-p") + 1] == variables["DAGSTER_GRPC_PORT"]
    # the variables dagster.yaml reads are all set (the password from the Secret)
    instance_variables = set(re.findall(r"\{env: (\w+)\}", (DOCKER / "dagster.yaml").read_text()))
    assert instance_variables - set(variables) == {"DAGSTER_POSTGRES_PASSWORD"}
