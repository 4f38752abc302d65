"""A canary API key through the whole pipeline: `opengrok run` against a remote teacher that requires it.

The key must reach the teacher (every request carries it) and appear nowhere else: not in the CLI's
output (Dagster's console log and the training subprocess's output included), the event log, the stored
run config the UI shows, metadata, Parquet files, checkpoints, stores or reports.
"""

import os
import subprocess
import sys

import pytest

from devtools.loopback import LoopbackConfig, LoopbackTeacher
from tests.conftest import REPO_ROOT, generative_only_profile, texts_written_under


CANARY = "xai-canary-5e4d3c2b1a0f9e8d7c6b"


@pytest.mark.integration
def test_canary_key_reaches_the_teacher_and_nothing_else_across_the_whole_pipeline(tmp_path, tiny_student):
    home = tmp_path / "home"
    with LoopbackTeacher(LoopbackConfig(expected_api_key=CANARY)) as teacher:
        env = {
            **os.environ,
            "OPENGROK_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster_home"),
            "OPENGROK_TEACHER_BASE_URL": teacher.base_url,
            "OPENGROK_TEACHER_MODEL": "grok-canary-test",
            "XAI_API_KEY": CANARY,
            "OPENGROK_STUDENT_MODEL": str(tiny_student),
            "OPENGROK_PROFILE": str(generative_only_profile(tmp_path)),  # the loopback teacher cannot annotate
        }
        run = subprocess.run(
            [sys.executable, "-m", "opengrok_dagster.cli", "run", "--topics", "climate,football", "--modes", "none"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert teacher.requests and all(r.authorization == f"Bearer {CANARY}" for r in teacher.requests)

    recorded = "\n".join([run.stdout, run.stderr, texts_written_under(home)])
    # The scan covers what each stage wrote: responses, the filtered set, masks, the adapter, the report.
    for written in ("grok-canary-test", "filtered_responses", "mask_tables", "lora_checkpoint", "external reference"):
        assert written in recorded, written
    assert (home / "checkpoints" / "none" / "adapter_model.safetensors").exists()
    assert CANARY not in recorded


URL_CANARY = "pw-canary-3c2b1a0f9e8d"  # the gateway password in the URL's userinfo
QUERY_CANARY = "qk-canary-8d7c6b5a4f3e"  # the gateway key as a query parameter
KEY_CANARY = "xai-canary-1f2e3d4c5b6a"  # the API key, from the environment


def _secret_url(base_url: str) -> str:
    """``base_url`` (http://127.0.0.1:PORT/v1) as a gateway that takes credentials in the URL is configured."""
    return base_url.replace("http://", f"http://proxyuser:{URL_CANARY}@") + f"?api_key={QUERY_CANARY}"


@pytest.mark.integration
@pytest.mark.parametrize("collection", ["online", "batch"])
@pytest.mark.parametrize("endpoint", ["up", "down"])
def test_credentials_in_the_url_and_the_key_are_written_nowhere(
    persistent_instance, tmp_path, monkeypatch, capfd, collection, endpoint
):
    from contextlib import nullcontext

    from dagster import EnvVar, materialize

    from assets.collection import prompts, raw_responses
    from devtools.batch_server import BatchServerConfig, LoopbackBatchServer
    from opengrok_dagster.offline.server import free_loopback_port
    from opengrok_dagster.partitions import collection_partition_key, topic_partitions
    from tests.conftest import GENERATIVE_ONLY
    from tests.test_collection_assets import ROUND, _everything_recorded, resources_for

    monkeypatch.setenv("OPENGROK_TEST_TEACHER_KEY", KEY_CANARY)
    server = LoopbackTeacher() if collection == "online" else LoopbackBatchServer(BatchServerConfig(0.1))
    live = server if endpoint == "up" else nullcontext()
    base_url = server.base_url if endpoint == "up" else f"http://127.0.0.1:{free_loopback_port()}/v1"
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
    with live:
        result = materialize(
            [prompts, raw_responses],
            resources=resources_for(
                tmp_path,
                _secret_url(base_url),
                api_key=EnvVar("OPENGROK_TEST_TEACHER_KEY"),
                collection=collection,
                batch_poll_s=0.05,
            ),
            instance=persistent_instance,
            partition_key=collection_partition_key("climate", ROUND),
            run_config=GENERATIVE_ONLY,
            raise_on_error=False,
        )
    assert result.success is (endpoint == "up")
    if endpoint == "up":  # the credentials reached the endpoint: the query as sent, the userinfo as basic auth
        asked = server.requests if collection == "online" else server.created
        assert asked
    else:
        description = result.failure_data_for_node("raw_responses").user_failure_data.description
        assert "cannot reach the teacher" in description and "http://***@127.0.0.1" in description
    recorded = _everything_recorded(persistent_instance, tmp_path, capfd)
    assert "raw_responses" in recorded and ("grok-test" if endpoint == "up" else "cannot reach") in recorded
    for canary in (URL_CANARY, QUERY_CANARY, KEY_CANARY):
        assert canary not in recorded, canary


@pytest.mark.integration
@pytest.mark.parametrize("endpoint", ["up", "down"])
def test_credentials_in_the_url_never_reach_the_cli_output_or_its_logs(tmp_path, endpoint):
    from contextlib import nullcontext

    from opengrok_dagster.offline.server import free_loopback_port

    home = tmp_path / "home"
    server = LoopbackTeacher()
    with server if endpoint == "up" else nullcontext():
        base_url = server.base_url if endpoint == "up" else f"http://127.0.0.1:{free_loopback_port()}/v1"
        env = {
            **os.environ,
            "OPENGROK_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster_home"),
            "OPENGROK_TEACHER_BASE_URL": _secret_url(base_url),
            "OPENGROK_TEACHER_MODEL": "grok-canary-test",
            "XAI_API_KEY": KEY_CANARY,
            "OPENGROK_PROFILE": str(generative_only_profile(tmp_path)),
        }
        run = subprocess.run(
            [sys.executable, "-m", "opengrok_dagster.cli", "run", "--topics", "climate", "--collect-only"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == (0 if endpoint == "up" else 1), run.stdout[-3000:] + run.stderr[-3000:]
    if endpoint == "up":
        assert len(server.requests) == 12
    else:
        assert "cannot reach the teacher endpoint http://***@127.0.0.1" in run.stderr and "api_key=***" in run.stderr
    recorded = "\n".join([run.stdout, run.stderr, texts_written_under(home)])
    assert "grok-canary-test" in recorded and list((home / "logs").glob("opengrok-*.log"))  # the log was scanned
    for canary in (URL_CANARY, QUERY_CANARY, KEY_CANARY):
        assert canary not in recorded, canary
