"""Shared fixtures: a temporary Dagster instance and OpenGrok home, the loopback teacher, the offline model and a
tiny student built from config, and the helpers several test modules use."""

import json
import os
import random
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from dagster import DagsterInstance
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint
from opengrok_dagster.offline_model import check_offline_model, offline_model_dir


REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# What a compose file's `!reset` tag (an override dropping what the base file sets, Compose v2.24+) loads as.
COMPOSE_RESET = "<reset>"


class _ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it, `!reset` included."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: COMPOSE_RESET)


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


# Fine-tune settings that train the tiny student in seconds (4 optimizer steps, two evaluations).
# Run config of tests that exercise the generative prompt grid alone: the default grid also annotates the
# user's posts, which these tests do not materialise.
GENERATIVE_ONLY = {"ops": {"prompts": {"config": {"annotation_share": 0.0}}}}


def generative_only_profile(directory: Path) -> Path:
    """The same, as a profile file for the processes a test starts (the CLI, `dagster dev`): cpu-demo without
    annotation prompts, for loopback teachers that cannot annotate posts. Pass it as OPENGROK_PROFILE."""
    path = directory / "generative-only.yaml"
    path.write_text(
        "description: cpu-demo without annotation prompts (tests)\nops:\n  prompts:\n    config:\n"
        "      annotation_share: 0.0\n"
    )
    return path


QUICK = dict(batch_size=4, max_steps=4, eval_steps=2, save_steps=2, max_length=48, warmup_steps=1, learning_rate=1e-3)


def texts_written_under(root: Path) -> str:
    """Everything readable that was written under ``root``, decoded: Parquet cells (the files themselves are
    compressed), every row of every SQLite table (event log, runs and their config, stores), other files as text."""
    texts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        head = path.read_bytes()[:16]
        if head.startswith(b"PAR1"):
            frame = pd.read_parquet(path)
            texts += [str(list(frame.columns)), frame.astype(str).to_csv()]
        elif head.startswith(b"SQLite format 3"):
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = [
                    name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
                texts += [repr(row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"')]
            finally:
                connection.close()
        texts.append(path.read_bytes().decode("latin-1"))  # the raw bytes too: WAL files, binary formats
    return "\n".join(texts)


# The OPENGROK_* settings the suite keeps from the developer's environment: where the provisioned inputs are (the
# offline model's cache, the evaluation data) and the opt-in that refreshes the UI screenshot in docs/. Every other
# one (the teacher endpoint, budgets, profile, student, crons, catalogues) would change what the tests exercise.
KEPT_SETTINGS = {"OPENGROK_CACHE_DIR", "OPENGROK_DATA_DIR", "OPENGROK_SAVE_UI_SCREENSHOT"}
# Secrets a developer may hold that a test must never send or find: the teacher's default key and the hub token.
DROPPED_SECRETS = {"XAI_API_KEY", "HF_TOKEN"}


def isolated_environment(environ, opengrok_home: Path, dagster_home: Path) -> dict[str, str]:
    """``environ`` as the tests see it: OPENGROK_HOME and DAGSTER_HOME in temporary directories, without the
    developer's OpenGrok settings and secrets."""
    kept = {
        name: value
        for name, value in environ.items()
        if name not in DROPPED_SECRETS and (not name.startswith("OPENGROK_") or name in KEPT_SETTINGS)
    }
    return kept | {"OPENGROK_HOME": str(opengrok_home), "DAGSTER_HOME": str(dagster_home)}


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    """Tests and the processes they start never read the developer's OpenGrok settings or write to their
    OPENGROK_HOME or DAGSTER_HOME (importing the definitions creates the home's logs/), and send no telemetry."""
    dagster_home = tmp_path_factory.mktemp("dagster_home_default")
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    opengrok_home = tmp_path_factory.mktemp("opengrok_home_default")
    isolated = isolated_environment(os.environ, opengrok_home, dagster_home)
    patch = pytest.MonkeyPatch()
    for name in set(os.environ) - set(isolated):
        patch.delenv(name)
    for name, value in isolated.items():
        patch.setenv(name, value)
    yield
    patch.undo()


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def persistent_instance(tmp_path):
    """A real on-disk Dagster instance (SQLite event log), as `dagster dev` and `opengrok run` use."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with DagsterInstance.from_config(str(home)) as local:
        yield local


@pytest.fixture
def loopback_teacher():
    with LoopbackTeacher(LoopbackConfig()) as server:
        yield server


@pytest.fixture(scope="session")
def offline_model() -> Path:
    """The provisioned SmolLM2 checkpoint; `make test` provisions it, so its absence is a failure."""
    return check_offline_model(offline_model_dir())


@pytest.fixture(scope="session")
def tokenizer(offline_model):
    """The student's tokenizer (SmolLM2's)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(offline_model))


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, tokenizer, offline_model) -> str:
    """A 2-layer Llama with the student's tokenizer: the real code paths of training and evaluation at a fraction
    of the cost. Its directory has the student's name because the tokenizer fingerprint of mask tables includes it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny_student") / offline_model.name
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def mask_table(tokenizer, train=16, validation=4) -> pd.DataFrame:
    """A mask table in the `mask_tables` contract for ``train`` + ``validation`` short synthetic examples."""
    rng = random.Random(0)
    rows = []
    for index in range(train + validation):
        prompt = tokenizer(f"Write a post about topic {index}:")["input_ids"]
        response = tokenizer(f" Loving the news about {index}! #topic{index} great day")["input_ids"]
        ids = prompt + response
        rows.append(
            {
                "example_id": f"ex{index:03d}",
                "split": "train" if index < train else "validation",
                "input_ids": ids,
                "response_start": len(prompt),
                "m": [rng.choice([0, 1, 1]) for _ in ids],
                "p": [round(rng.uniform(0.05, 1.0), 3) for _ in ids],
                "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            }
        )
    return pd.DataFrame(rows)


# The evaluation's tiny adapters (tests/test_eval_report.py, tests/test_eval_batching.py).
@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine two spin-wait many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_adapter(base_dir, adapter_dir, mode, recorded_base=None, seed=1):
    """A peft LoRA adapter with non-zero weights and the checkpoint record the trainer writes beside it."""
    torch.manual_seed(seed)
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(adapter_dir)
    record = {
        "mask_mode": mode,
        "base_model": str(recorded_base or base_dir),
        "global_step": 3,
        "best_val_loss": 2.5,
        "example_ids": ["e1", "e2"],
    }
    (adapter_dir / "opengrok_checkpoint.json").write_text(json.dumps(record))
    return adapter_dir


def adapters(home):
    return {mode: HomeLayout(home).checkpoint_dir(mode) for mode in ("none", "hard")}


@pytest.fixture
def checkpoints_home(tmp_path, tiny_student):
    home = tmp_path / "home"
    for seed, mode in enumerate(("none", "hard"), 1):
        write_adapter(tiny_student, HomeLayout(home).checkpoint_dir(mode), mode, seed=seed)
    return home


# The docker/ deployment tests (tests/test_docker_*.py, marker `deployment`): the engine's state directory and the
# images `make docker-images` builds into it.
DOCKER_STATE = Path(os.environ.get("OPENGROK_DOCKER_STATE", "/var/tmp/opengrok-docker"))
DOCKER_IMAGE = os.environ.get("OPENGROK_IMAGE", "opengrok:offline")
DOCKER_POSTGRES_IMAGE = os.environ.get("OPENGROK_POSTGRES_IMAGE", "opengrok-postgres:bookworm")


@pytest.fixture(scope="module")
def engine():
    """The Docker engine holding the built images; stopped (by its pid file) when the module ends."""
    script = str(REPO_ROOT / "docker" / "dockerd-private.sh")
    started = subprocess.run([script, "start", str(DOCKER_STATE)], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"could not start the Docker engine: {started.stderr.strip()} (make docker-packages installs it)")
    env = {**os.environ, "DOCKER_HOST": started.stdout.strip().split("=", 1)[1]}
    try:
        for image in (DOCKER_IMAGE, DOCKER_POSTGRES_IMAGE):
            if subprocess.run(["docker", "image", "inspect", image], env=env, capture_output=True).returncode:
                pytest.fail(
                    f"image {image} is not in the engine at {DOCKER_STATE}: build it with `make docker-images`"
                )
        yield env
    finally:
        subprocess.run([script, "stop", str(DOCKER_STATE)], capture_output=True, timeout=120)
