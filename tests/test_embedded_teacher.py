"""The real offline teacher: `transformers serve --continuous-batching` serving SmolLM2 on loopback."""

import asyncio
import os

import pandas as pd
import pytest
from dagster import materialize

from assets.collection import prompts, raw_responses
from opengrok_dagster.cli import main
from opengrok_dagster.collect.client import ClientLimits, TeacherClient
from opengrok_dagster.collect.plan import round_prompt_grid, tokenizer_token_counter
from opengrok_dagster.collect.prompts import PromptGridConfig, prompt_messages
from opengrok_dagster.collect.result import SamplingParams
from opengrok_dagster.collect.topics import find_topic
from opengrok_dagster.offline.server import TeacherServer
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths, ParquetIOManager, TeacherResource
from resources.teacher import ANNOTATED_EMBEDDED_LABEL
from tests.conftest import REPO_ROOT


pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a reaped-but-listed zombie is not alive
        return stat.read().split()[2] != "Z"


def test_server_answers_concurrent_chat_completions_and_stops_by_pid(offline_model, tmp_path, monkeypatch, capsys):
    """One server start (the slow part) serves three checks: concurrent completions, the dry run's estimate
    against the usage the server reports, and the stop by pid."""
    dry_run = _dry_run_prompts(tmp_path, monkeypatch, capsys)
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
        collected = _prompt_usage(server, [prompt_messages(row) for row in dry_run["rows"]])
        direct = _prompt_usage(server, CONVERSATIONS)
    finally:
        server.stop()
    assert all(r.ok and r.text and r.completion_tokens and r.request_id for r in results)
    assert all(r.finish_reason in ("stop", "length") for r in results)
    assert not _alive(pid)
    # The estimate is checked against the server, not against itself.
    assert dry_run["prompt_tokens"] == sum(collected) > 0
    count = tokenizer_token_counter(offline_model)
    assert [count(messages) for messages in CONVERSATIONS] == direct


# What tokenizer_token_counter must count as the server does: a system prompt, emoji, Greek, a long post.
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You write short posts."}, {"role": "user", "content": "Γεια σου 🎉 #κόσμος"}],
    [{"role": "user", "content": "Loving the match tonight!!! 😍⚽ @user " * 20}],
]


def _dry_run_prompts(home, monkeypatch, capsys) -> dict:
    """`opengrok run --dry-run` for football (embedded teacher): its prompt-token figure, and the prompts it
    counted (the default grid of that round)."""
    monkeypatch.setenv("OPENGROK_HOME", str(home))
    assert main(["run", "--dry-run", "--round", "2026-11-24", "--topics", "football"]) == 0
    out = capsys.readouterr().out
    (football,) = [line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| football |")]
    paths = OpenGrokPaths(home=str(home), topic_catalogue=str(CONFIG_DIR / "topics.yaml"))
    rows, _ = round_prompt_grid(find_topic(paths.topics(), "football"), PromptGridConfig(), "2026-11-24", None)
    assert len(rows) == int(football[0]) and "SmolLM2-135M-Instruct tokenizer" in out
    return {"prompt_tokens": int(football[2]), "rows": rows}


def _prompt_usage(server, conversations: list[list[dict]]) -> list[int]:
    """The prompt tokens the real server reports (its `usage`) for each conversation, one token answered."""
    from opengrok_dagster.collect.client import TeacherEndpoint

    async def ask():
        endpoint = TeacherEndpoint(server.base_url, server.model_id)
        async with TeacherClient(
            endpoint, SamplingParams(max_tokens=1, temperature=0.0), ClientLimits(max_concurrency=4)
        ) as client:
            return await asyncio.gather(*(client.complete(messages) for messages in conversations))

    results = asyncio.run(ask())
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return [r.prompt_tokens for r in results]


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
            "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
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
    # generative prompts pass the annotating front to `transformers serve`; the label names the annotator beside it
    assert set(frame["teacher_model"]) == {ANNOTATED_EMBEDDED_LABEL}
    estimate = result.asset_materializations_for_node("prompts")[0].metadata["estimate_prompt_tokens"].value
    assert estimate == frame["prompt_tokens"].sum()  # the prompts asset's estimate is the usage the server reported
    assert _server_pids() <= servers_before  # the server this run started is gone (others may be running)


@pytest.mark.timing  # the server must be gone within 10 s
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
    """`opengrok run` keeps one embedded server for all its runs instead of starting one per topic. The plain
    server (`OPENGROK_TEACHER_ANNOTATOR=teacher`, as in docker/), without the reference annotator's front."""
    from resources.teacher import _KEPT_SERVERS, _stop_kept_servers

    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["football"])
    teacher = TeacherResource(
        mode="embedded",
        annotator="teacher",
        max_tokens=8,
        max_concurrency=4,
        keep_server=True,
        server_log=str(tmp_path / "serve.log"),
    )
    resources = {
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
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


def test_embedded_teacher_with_logprobs_fills_raw_responses_and_kd_targets_build_from_them(
    offline_model, persistent_instance, tmp_path
):
    """`OPENGROK_TEACHER_TOP_LOGPROBS` with the offline default, end to end: the front before `transformers serve`
    scores each answer with the same checkpoint, raw_responses store those numbers, and kd_targets aligns them."""
    import json

    from assets.distillation import kd_targets
    from assets.filtering import filtered_responses
    from assets.masks import mask_tables
    from opengrok_dagster.offline.logprobs import TeacherLogprobs
    from resources import StudentResource

    servers_before = _server_pids()
    persistent_instance.add_dynamic_partitions(topic_partitions.name, ["football"])
    resources = {
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        "paths": OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
        "teacher": TeacherResource(
            mode="embedded", max_tokens=32, max_concurrency=4, top_logprobs=5, server_log=str(tmp_path / "serve.log")
        ),
        "student": StudentResource(),
    }
    collected = materialize(
        [prompts, raw_responses],
        resources=resources,
        instance=persistent_instance,
        partition_key=collection_partition_key("football", "2026-11-24"),
        run_config={
            "ops": {
                "prompts": {
                    "config": {
                        "base_per_topic": 4,
                        "style_per_topic": 1,
                        "adversarial_per_topic": 1,
                        "annotation_share": 0.0,
                    }
                }
            }
        },
    )
    assert collected.success
    assert _server_pids() <= servers_before  # the front's `transformers serve` child is gone with the run
    raw = pd.read_parquet(tmp_path / "assets" / "raw_responses" / "2026-11-24" / "football.parquet")
    assert len(raw) == 6 and raw["error"].isna().all() and raw["logprobs"].notna().all()
    scorer = TeacherLogprobs.load(offline_model)
    for row in raw.itertuples():
        messages = [{"role": "system", "content": row.system_prompt}, {"role": "user", "content": row.prompt}]
        stored, expected = json.loads(row.logprobs), scorer.content(messages, row.response, top_logprobs=5)
        assert [e["bytes"] for e in stored] == [e["bytes"] for e in expected]
        assert b"".join(bytes(e["bytes"]) for e in stored) == row.response.encode()
        for got, want in zip(stored, expected):
            assert got["logprob"] == pytest.approx(want["logprob"], abs=1e-4)
            assert [a["bytes"] for a in got["top_logprobs"]] == [a["bytes"] for a in want["top_logprobs"]]
            assert [a["logprob"] for a in got["top_logprobs"]] == pytest.approx(
                [a["logprob"] for a in want["top_logprobs"]], abs=1e-4
            )

    prepared = materialize(
        [filtered_responses, mask_tables, kd_targets],
        resources=resources,
        instance=persistent_instance,
        run_config={
            "ops": {
                # a few short answers of a 135M model: keep what the filters allow and train on all of it
                "filtered_responses": {
                    "config": {"max_rejection_rate": 1.0, "heldout_fraction": 0.0, "validation_fraction": 0.0}
                },
                "mask_tables": {"config": {"max_length": 512, "min_unmasked_rate": 0.0, "max_unmasked_rate": 1.0}},
            }
        },
    )
    assert prepared.success and all(check.passed for check in prepared.get_asset_check_evaluations())
    masks = pd.read_parquet(tmp_path / "assets" / "mask_tables.parquet")
    targets = pd.read_parquet(tmp_path / "assets" / "kd_targets.parquet")
    assert len(masks) >= 1 and list(targets["example_id"]) == list(masks["example_id"])
    metadata = prepared.asset_materializations_for_node("kd_targets")[0].metadata
    assert metadata["rows_with_logprobs"].value == len(masks)
    assert metadata["aligned_share"].value == 1.0  # the teacher tokenises as the student: every token aligns
