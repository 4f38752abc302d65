"""The real offline teacher: `transformers serve --continuous-batching` serving SmolLM2 on loopback."""

import asyncio
import os

import pandas as pd
import pytest
from dagster import materialize

from assets.collection import prompts, raw_responses
from opengrok_dagster.collect.client import ClientLimits, SamplingParams, TeacherClient
from opengrok_dagster.offline.server import TeacherServer
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from resources import OpenGrokPaths, ParquetIOManager, TeacherResource
from tests.conftest import REPO_ROOT


pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a reaped-but-listed zombie is not alive
        return stat.read().split()[2] != "Z"


def test_server_answers_concurrent_chat_completions_and_stops_by_pid(offline_model, tmp_path):
    server = TeacherServer(offline_model, log_path=tmp_path / "serve.log")
    server.start()
    pid = server.pid
    try:
        from opengrok_dagster.collect.client import TeacherEndpoint

        async def ask():
            endpoint = TeacherEndpoint(server.base_url, server.model_id)
            async with TeacherClient(
                endpoint, SamplingParams(max_tokens=12, temperature=0.0), ClientLimits(max_concurrency=4)
            ) as client:
                return await asyncio.gather(
                    *(client.complete([{"role": "user", "content": f"Say hello to user {i}."}]) for i in range(4))
                )

        results = asyncio.run(ask())
    finally:
        server.stop()
    assert all(r.ok and r.text and r.completion_tokens and r.request_id for r in results)
    assert all(r.finish_reason in ("stop", "length") for r in results)
    assert not _alive(pid)


def _server_pids() -> set[int]:
    """PIDs of every live `transformers serve` process on the machine."""
    pids = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if b"transformers.cli.transformers\0serve" in cmdline.read() and _alive(int(entry)):
                    pids.add(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def test_embedded_resource_collects_a_partition_and_tears_the_server_down(
    offline_model, persistent_instance, tmp_path
):
    servers_before = _server_pids()
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["football"])
    teacher = TeacherResource(
        mode="embedded", max_tokens=16, max_concurrency=4, server_log=str(tmp_path / "serve.log")
    )
    result = materialize(
        [prompts, raw_responses],
        resources={
            "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
            "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(REPO_ROOT / "config" / "topics.yaml")),
            "teacher": teacher,
        },
        instance=persistent_instance,
        partition_key=collection_partition_key("football", "2026-11-24"),
        run_config={
            "ops": {
                "prompts": {
                    "config": {
                        "base_per_topic": 2,
                        "style_per_topic": 1,
                        "adversarial_per_topic": 1,
                        "annotation_share": 0.0,
                    }
                }
            }
        },
    )
    assert result.success
    frame = pd.read_parquet(tmp_path / "assets" / "raw_responses" / "2026-11-24" / "football.parquet")
    assert len(frame) == 4 and frame["error"].isna().all() and (frame["response"].str.len() > 0).all()
    assert set(frame["teacher_model"]) == {"SmolLM2-135M-Instruct"}
    assert _server_pids() <= servers_before  # the server this run started is gone (others may be running)


def test_server_dies_with_a_killed_parent(offline_model, tmp_path):
    """SIGKILL of the process that started the server (a killed run) must not leave the server running."""
    import signal
    import subprocess
    import sys
    import time

    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from opengrok_dagster.offline.server import TeacherServer\n"
            f"server = TeacherServer({str(offline_model)!r})\n"
            "server.start()\n"
            "print(server.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        server_pid = int(starter.stdout.readline())
        assert _alive(server_pid)
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid)
    finally:
        starter.kill()


def test_kept_server_serves_consecutive_runs_and_stops_at_exit(offline_model, persistent_instance, tmp_path):
    """`opengrok run` keeps one embedded server for all its runs instead of starting one per topic."""
    from resources.teacher import _KEPT_SERVERS, _stop_kept_servers

    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["football"])
    teacher = TeacherResource(
        mode="embedded", max_tokens=8, max_concurrency=4, keep_server=True, server_log=str(tmp_path / "serve.log")
    )
    resources = {
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(REPO_ROOT / "config" / "topics.yaml")),
        "teacher": teacher,
    }
    small = {
        "ops": {
            "prompts": {
                "config": {
                    "base_per_topic": 1,
                    "style_per_topic": 0,
                    "adversarial_per_topic": 0,
                    "annotation_share": 0.0,
                }
            }
        }
    }
    pids = []
    try:
        for round_key in ("2026-11-23", "2026-11-24"):
            result = materialize(
                [prompts, raw_responses],
                resources=resources,
                instance=persistent_instance,
                partition_key=collection_partition_key("football", round_key),
                run_config=small,
            )
            assert result.success
            pids.append(next(iter(_KEPT_SERVERS.values())).pid)
        assert pids[0] == pids[1] and _alive(pids[0])
    finally:
        _stop_kept_servers()
    assert not _alive(pids[0]) and not _KEPT_SERVERS
