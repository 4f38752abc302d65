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
