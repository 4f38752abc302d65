"""The suite runs in its own environment: the developer's OpenGrok settings, secrets and homes never reach a test
or a process it starts (tests/conftest.py `_isolated_environment`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT, isolated_environment


DEVELOPER = {
    "PATH": "/usr/bin",
    "OPENGROK_HOME": "/home/dev/.opengrok",
    "DAGSTER_HOME": "/home/dev/.opengrok/dagster_home",
    "OPENGROK_TEACHER_BASE_URL": "https://api.x.ai/v1",
    "OPENGROK_TEACHER_MODEL": "grok-4",
    "OPENGROK_TEACHER_BUDGET_USD": "3",
    "OPENGROK_PROFILE": "gpu",
    "OPENGROK_STUDENT_MODEL": "microsoft/Phi-3-mini-4k-instruct",
    "OPENGROK_CACHE_DIR": "/srv/cache/opengrok",
    "OPENGROK_DATA_DIR": "/srv/data",
    "XAI_API_KEY": "xai-developers-own-key",
    "HF_TOKEN": "hf_developers_own_token",
}


def test_the_developers_settings_and_secrets_are_dropped_and_the_homes_replaced(tmp_path):
    seen = isolated_environment(DEVELOPER, tmp_path / "home", tmp_path / "dagster")
    assert seen == {
        "PATH": "/usr/bin",
        "OPENGROK_CACHE_DIR": "/srv/cache/opengrok",  # where the offline model is provisioned
        "OPENGROK_DATA_DIR": "/srv/data",  # where the evaluation data is
        "OPENGROK_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }


def test_importing_the_definitions_in_a_subprocess_writes_only_under_the_temporary_home(tmp_path):
    """A process a test starts sees the isolated environment; the definitions create their logs/ there."""
    home = Path(os.environ["OPENGROK_HOME"])
    base_temp = Path(os.environ["DAGSTER_HOME"]).parent
    assert home.is_relative_to(base_temp) and not home.is_relative_to(REPO_ROOT)
    script = (
        "import json, os\n"
        "from opengrok_dagster.definitions import defs\n"
        "from opengrok_dagster.settings import home_layout\n"
        "print(json.dumps({'logs': str(home_layout().logs_dir), "
        "'settings': sorted(k for k in os.environ if k.startswith('OPENGROK_'))}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["logs"]) == home / "logs" and (home / "logs").is_dir()
    assert not (tmp_path / ".opengrok").exists()  # not the default home in the working directory either
    assert not [name for name in seen["settings"] if name.startswith("OPENGROK_TEACHER_")]
    assert set(seen["settings"]) <= {"OPENGROK_HOME", "OPENGROK_CACHE_DIR", "OPENGROK_DATA_DIR"}
