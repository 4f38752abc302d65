"""A canary API key through the whole pipeline, run twice as a user runs it: `opengrok run` against a remote teacher
that requires the key, with annotation prompts over the user's posts and two mask modes.

The key must reach the teacher (every request carries it) and appear nowhere else: not in the CLI's
output (Dagster's console log and the training subprocess's output included), the event log, the stored
run config the UI shows, metadata, Parquet files, checkpoints, stores or reports. The second run of the same round
sends no request and trains nothing: the response store and the adapters are as the first run left them.
"""

import hashlib
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field

import pandas as pd
import pytest

from devtools.loopback import LoopbackTeacher
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.offline.reference_teacher import ReferenceTeacher
from opengrok_dagster.offline.serving import respond_json
from tests.conftest import REPO_ROOT, SHARED_DATA, generative_only_profile, texts_written_under


CANARY = "xai-canary-5e4d3c2b1a0f9e8d7c6b"
MODES = ("none", "hard")
# Small sizes: one round of two topics (12 generated and 12 annotation prompts each), four optimizer steps per
# mode, a sampled evaluation. What is tested is the path, not the scores.
PROFILE = """description: canary (tests) - annotation prompts, two short fine-tunes, a sampled evaluation
ops:
  prompts:
    config:
      annotation_share: 0.5
      annotation_tasks: [tweeteval_sentiment]
  mask_tables: {config: {max_length: 128}}
  lora_checkpoint:
    config: {max_length: 128, max_steps: 4, eval_steps: 2, save_steps: 2, batch_size: 4, warmup_steps: 1}
  eval_report:
    config:
      classification_examples: 10
      task_examples: {tweeteval_sentiment: 20}
      ner_examples: 1
      agreement_examples: 2
"""


@dataclass
class KeyedTeacher(ReferenceTeacher):
    """The reference teacher (it labels the annotation prompts) behind an API key, also writing posts for the
    generative prompts, as a remote Grok would; ``authorizations`` records every request's header."""

    authorizations: list = field(default_factory=list)

    def answer(self, prompt: str, structured: bool = False) -> str:
        try:
            return super().answer(prompt, structured)
        except ValueError:  # a generative prompt: a real post, a different one for each prompt
            posts = GENERATED_POSTS
            return posts[int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(posts)]

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/chat/completions":
            headers = dict(scope["headers"])
            self.authorizations.append(headers.get(b"authorization", b"").decode())
            if headers.get(b"authorization") != f"Bearer {CANARY}".encode():
                return await respond_json(send, 401, {"error": {"message": "invalid api key"}})
        return await super()._app(scope, receive, send)


GENERATED_POSTS = (
    (SHARED_DATA / "tweeteval" / "emotion" / "train_text.txt").read_text(encoding="utf-8").splitlines()[:400]
)


def opengrok_run(env: dict) -> subprocess.CompletedProcess:
    topics, modes = "climate,football", ",".join(MODES)
    run = subprocess.run(
        [sys.executable, "-m", "opengrok_dagster.cli", "run", "--topics", topics, "--modes", modes],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def stored_responses(layout: HomeLayout) -> int:
    connection = sqlite3.connect(f"file:{layout.response_store_path}?mode=ro", uri=True)
    try:
        return connection.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    finally:
        connection.close()


def adapters(layout: HomeLayout) -> dict:
    """Each mode's manifest, and the files of its published adapter with their modification times (but the model
    card's: eval_report writes each run's scores into it)."""
    return {
        mode: (
            pd.read_parquet(layout.asset_path("lora_checkpoint", mode)).to_dict("records"),
            {p.name: p.stat().st_mtime_ns for p in layout.checkpoint_dir(mode).iterdir() if p.name != "README.md"},
        )
        for mode in MODES
    }


@pytest.mark.integration
def test_canary_key_reaches_the_teacher_and_nothing_else_and_a_rerun_sends_and_trains_nothing(tmp_path, tiny_student):
    home = tmp_path / "home"
    layout = HomeLayout(home)
    profile, catalogue = tmp_path / "canary.yaml", tmp_path / "posts.yaml"
    profile.write_text(PROFILE)
    catalogue.write_text(
        "shards:\n  - key: semeval2015-train\n    path: data:semeval2017_task4a/twitter-2015train-A.tsv\n"
    )
    with KeyedTeacher.fit(SHARED_DATA, ("tweeteval_sentiment",)) as teacher:
        env = {
            **os.environ,
            "OPENGROK_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster_home"),
            "OPENGROK_TEACHER_BASE_URL": teacher.base_url,
            "OPENGROK_TEACHER_MODEL": "grok-canary-test",
            "XAI_API_KEY": CANARY,
            "OPENGROK_STUDENT_MODEL": str(tiny_student),
            "OPENGROK_PROFILE": str(profile),
            "OPENGROK_POSTS_CATALOGUE": str(catalogue),
            "OPENGROK_DATA_DIR": str(SHARED_DATA),
        }
        first = opengrok_run(env)
        sent, stored, published = len(teacher.authorizations), stored_responses(layout), adapters(layout)
        assert sent and set(teacher.authorizations) == {f"Bearer {CANARY}"}
        second = opengrok_run(env)
        assert len(teacher.authorizations) == sent, "the rerun of the same round sent requests"

    raw = pd.concat(pd.read_parquet(path) for path in (home / "assets" / "raw_responses").rglob("*.parquet"))
    assert (raw["variant"] == "annotation").sum() > 0 and (raw["variant"] != "annotation").sum() > 0
    assert raw["error"].isna().all() and stored == len(raw)
    assert stored_responses(layout) == stored  # nothing new paid for
    assert adapters(layout) == published  # the same manifests, and no adapter file rewritten: nothing trained
    recorded = "\n".join([first.stdout, first.stderr, second.stdout, second.stderr, texts_written_under(home)])
    # The scan covers what each stage wrote: responses, the filtered set, masks, the adapters, the report.
    for written in ("grok-canary-test", "filtered_responses", "mask_tables", "lora_checkpoint", "external reference"):
        assert written in recorded, written
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
