"""docs/bad-inputs.md as a contract: for a row, the input it describes is run here and every message quoted in its
`message` column must be what the user sees, on one line.

How a row's quoted text is read (docs/bad-inputs.md says the same): each backticked span is one message; `<...>`
stands for a value the message prints in full (a path, a URL), `...` for text left out; every other character is
literal and must appear, in order, in one of the messages the row's probe returns. So changing a message's fix text
without the doc, or splitting it over lines, fails that row here.

A new row joins the contract with a probe: a function below taking pytest's ``tmp_path`` and ``monkeypatch`` and
returning the messages its input produces, registered with ``@probe(<row number>)`` (``integration=True`` where
it starts a process: `opengrok run`, the training subprocess); further parameters name fixtures of tests/conftest.py (``tiny_student``,
``tokenizer``, ``persistent_instance``) it is given. For a row that is not an error, the messages are what the user
sees instead (a reason code, a note in the report). A row not probed yet is listed
in NOT_YET_PROBED (the invariant test fails on a row that is in neither).
"""

import asyncio
import contextlib
import dataclasses
import functools
import importlib.util
import inspect
import io
import os
import re
import socket
from collections.abc import Callable

import httpx
import pandas as pd
import pytest
import respx
from dagster import Failure

from opengrok_dagster.cli import main
from tests.conftest import REPO_ROOT, SHARED_DATA, mask_table


CATALOGUE = REPO_ROOT / "docs" / "bad-inputs.md"
PROBES: dict[int, Callable] = {}

# Rows held only by the test each cites: 4's refusal is the webserver's GraphQL answer over a running `dagster dev`;
# 36 quotes no message: a missing variable ends in Dagster's own multi-line config error (with a stack trace), and
# a wrong password needs a PostgreSQL server.
NOT_YET_PROBED = {4, 36}


def documented_rows() -> dict[int, str]:
    """Row number -> the row's `message` column."""
    rows = {}
    for line in CATALOGUE.read_text().splitlines():
        match = re.match(r"\| (\d+) \|", line)
        if match:
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[int(match.group(1))] = cells[3].replace("\\|", "|")
    return rows


def quoted_messages(column: str) -> list[str]:
    """The backticked spans of a message column (``double`` ones may hold single backticks)."""
    return [first or second for first, second in re.findall(r"``(.+?)``|`([^`]+)`", column)]


def holds(documented: str, message: str) -> bool:
    """``message`` has the documented text: its literal parts in order, `<...>` and `...` standing for anything."""
    parts = [part.strip() for part in re.split(r"<[^<>]*>|\.\.\.", documented)]
    pattern = ".*?".join(re.escape(part) for part in parts if part)
    return re.search(pattern, message, re.DOTALL) is not None


INTEGRATION: set[int] = set()  # rows whose probe starts a process (the CLI, the trainer): marked `integration`


def probe(row: int, integration: bool = False):
    def register(function):
        PROBES[row] = function
        if integration:
            INTEGRATION.add(row)
        return function

    return register


def error_of(call: Callable, *args, **kwargs) -> str:
    """The message a bad input ends in: an exception's text, or a Dagster Failure's description."""
    try:
        call(*args, **kwargs)
    except Failure as failure:
        return failure.description
    except Exception as exc:  # noqa: BLE001 - any error type: the message is what is checked
        return str(exc)
    raise AssertionError(f"{call.__qualname__}{args} accepted the bad input")


def cli_error(*argv: str) -> str:
    """What `opengrok` prints for a refused command line: one `opengrok: error: ` line, exit status 2."""
    captured, environment = io.StringIO(), dict(os.environ)
    with contextlib.redirect_stderr(captured):
        try:
            status = main(list(argv))
        except SystemExit as exit_info:
            status = exit_info.code
        finally:  # the CLI exports DAGSTER_HOME and OPENGROK_PROFILE for the runs it starts
            os.environ.clear()
            os.environ.update(environment)
    assert status == 2, (argv, status, captured.getvalue())
    text = captured.getvalue()
    lines = [line for line in text.splitlines() if line.startswith("opengrok: error: ")]
    assert len(lines) == 1 and text.endswith("\n"), text
    return text[len("opengrok: error: ") :].removesuffix("\n")


@probe(1)
def _topic_key_with_a_slash(tmp_path, monkeypatch):
    return [cli_error("topics", "add", "news/tech")]


@probe(2)
def _malformed_topic_catalogue(tmp_path, monkeypatch):
    from opengrok_dagster.collect.topics import load_topic_catalogue

    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  - key: a\n  - key: a\n")
    return [error_of(load_topic_catalogue, path)]


@probe(3)
def _run_for_a_topic_that_is_not_a_partition(tmp_path, monkeypatch):
    return [cli_error("run", "--topics", "k-pop")]


@probe(5)
def _unknown_prompt_template(tmp_path, monkeypatch):
    from assets.collection import PromptsConfig

    return [error_of(PromptsConfig(templates=["nope"]).domain_config)]


@probe(6)
def _offline_model_not_provisioned(tmp_path, monkeypatch):
    from opengrok_dagster.offline_model import check_offline_model

    return [error_of(check_offline_model, tmp_path / "models" / "SmolLM2-135M-Instruct")]


@probe(8)
def _remote_teacher_without_endpoint(tmp_path, monkeypatch):
    from resources import TeacherResource

    return [error_of(TeacherResource(mode="remote").endpoint)]


@probe(9)
def _rejected_api_key(tmp_path, monkeypatch):
    from opengrok_dagster.collect.client import TeacherClient, TeacherEndpoint

    base = "http://teacher.test/v1"

    async def ask():
        async with TeacherClient(TeacherEndpoint(base, "grok-test", "sk-wrong")) as client:
            return await client.complete([{"role": "user", "content": "hi"}])

    with respx.mock:
        respx.post(f"{base}/chat/completions").mock(return_value=httpx.Response(401, json={"error": "bad key"}))
        return [error_of(asyncio.run, ask())]


@probe(14)
def _blocklist_that_is_not_a_file(tmp_path, monkeypatch):
    from assets.filtering import FilteredResponsesConfig

    return [error_of(FilteredResponsesConfig(blocklist_path="/nonexistent/blocklist.txt").domain_config)]


@probe(15)
def _language_by_name(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.language import LanguageDetector

    return [error_of(LanguageDetector, ["english"], ["en", "es"], 0.5)]


@probe(16)
def _toxicity_classifier_that_cannot_be_imported(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.toxicity import load_toxicity_classifier

    return [error_of(load_toxicity_classifier, "no_such_module:Model")]


@probe(22)
def _invalid_mask_settings(tmp_path, monkeypatch):
    from assets.masks import MaskTablesConfig

    return [error_of(MaskTablesConfig(random_mask_rate=1.5, sampling="coin").domain_config)]


@probe(26)
def _training_device_not_there(tmp_path, monkeypatch):
    import torch

    from resources import TrainingResource

    if torch.cuda.is_available():
        pytest.skip("the error of a machine without CUDA")

    return [error_of(TrainingResource(device="cuda").check_placement)]


@probe(29)
def _conll_line_without_a_tab(tmp_path, monkeypatch):
    from opengrok_dagster.tasks.datasets import read_conll

    (tmp_path / "a.conll").write_text("hello\tO\nworld O\n")
    return [error_of(read_conll, tmp_path / "a.conll")]


@probe(30)
def _missing_data_file_or_directory(tmp_path, monkeypatch):
    from opengrok_dagster.tasks.datasets import read_conll, resolve_data_dir

    monkeypatch.setenv("OPENGROK_DATA_DIR", str(tmp_path / "typo"))
    return [error_of(read_conll, tmp_path / "nowhere.conll"), error_of(resolve_data_dir)]


@probe(31)
def _misspelt_task(tmp_path, monkeypatch):
    from opengrok_dagster.tasks.specs import task_spec

    return [error_of(task_spec, "sentimnt")]


@probe(34)
def _invalid_cron(tmp_path, monkeypatch):
    from opengrok_dagster.settings import recollect_cron

    monkeypatch.setenv("OPENGROK_RECOLLECT_CRON", "0 25 * * *")
    return [error_of(recollect_cron)]


@probe(35)
def _retrain_threshold_not_a_fraction(tmp_path, monkeypatch):
    from opengrok_dagster.settings import retrain_threshold

    monkeypatch.setenv("OPENGROK_RETRAIN_THRESHOLD", "lots")
    return [error_of(retrain_threshold)]


@probe(39)
def _run_config_value_the_domain_refuses(tmp_path, monkeypatch):
    from assets.training import LoraCheckpointConfig

    return [error_of(LoraCheckpointConfig(save_steps=3).domain_config)]


@probe(42)
def _unknown_profile(tmp_path, monkeypatch):
    from opengrok_dagster.profiles import load_profile

    return [error_of(load_profile, "gpu-large"), cli_error("run", "--profile", "gpu-large")]


@probe(44)
def _profile_with_two_max_lengths(tmp_path, monkeypatch):
    from opengrok_dagster.profiles import load_profile

    profile = tmp_path / "long-masks.yaml"
    profile.write_text("ops:\n  mask_tables: {config: {max_length: 256}}\n")
    return [error_of(load_profile, str(profile))]


@probe(54)
def _command_line_arguments(tmp_path, monkeypatch):
    return [
        cli_error("run", "--round", "yesterday"),
        cli_error("run", "--round", "2999-01-01"),
        cli_error("run", "--topics", "football,,climate"),
        cli_error("review", "accept", "zz-not-hex"),
        cli_error("run", "--bogus"),
    ]


@probe(56)
def _budget_that_is_not_positive(tmp_path, monkeypatch):
    from opengrok_dagster.collect.budget import BudgetLimits

    return [error_of(BudgetLimits, daily_usd=-1.0)]


@probe(59)
def _top_logprobs_beyond_the_provider(tmp_path, monkeypatch):
    from opengrok_dagster.collect.client import SamplingParams, TeacherClient, TeacherEndpoint

    return [error_of(TeacherClient, TeacherEndpoint("https://api.x.ai/v1", "grok-4"), SamplingParams(top_logprobs=12))]


@probe(65)
def _malformed_posts_catalogue(tmp_path, monkeypatch):
    from opengrok_dagster.posts.sources import load_posts_catalogue

    bad_key, twice = tmp_path / "bad-key.yaml", tmp_path / "twice.yaml"
    bad_key.write_text("shards:\n  - key: Bad Key\n    path: a.jsonl\n")
    twice.write_text("shards:\n  - key: a\n    path: a.jsonl\n  - key: a\n    path: b.jsonl\n")
    return [error_of(load_posts_catalogue, bad_key), error_of(load_posts_catalogue, twice)]


@probe(67)
def _split_with_other_labels(tmp_path, monkeypatch):
    from opengrok_dagster.tasks.specs import label_words, task_spec

    return [error_of(label_words, task_spec("btc"), ("LOC", "PER"))]


@probe(72)
def _label_issue_settings(tmp_path, monkeypatch):
    from assets.filtering import FilteredResponsesConfig

    return [
        error_of(FilteredResponsesConfig(label_issues="maybe").domain_config),
        error_of(FilteredResponsesConfig(label_issue_min_rows=3).domain_config),
    ]


@probe(73)
def _batch_settings_out_of_range(tmp_path, monkeypatch):
    from opengrok_dagster.collect.teacher import BatchSettings

    return [error_of(BatchSettings, poll_s=0), error_of(BatchSettings, price_factor=2)]


@probe(11)
def _corrupt_raw_responses(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.raw import read_raw_responses

    (tmp_path / "raw_responses" / "2026-11-24").mkdir(parents=True)
    (tmp_path / "raw_responses" / "2026-11-24" / "football.parquet").write_bytes(b"not parquet")
    return [error_of(read_raw_responses, tmp_path / "raw_responses", ["2026-11-24"])]


@probe(12)
def _raw_responses_without_a_column(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.raw import RAW_COLUMNS, read_raw_responses

    (tmp_path / "2026-11-24").mkdir()
    columns = {column: ["x"] for column in RAW_COLUMNS if column != "response"}
    pd.DataFrame(columns).to_parquet(tmp_path / "2026-11-24" / "football.parquet")
    return [error_of(read_raw_responses, tmp_path, ["2026-11-24"])]


@probe(13)
def _nothing_collected_yet(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.raw import read_raw_responses

    return [error_of(read_raw_responses, tmp_path / "raw_responses", [])]


@probe(17)
def _corrupt_prompt_feedback(tmp_path, monkeypatch):
    from opengrok_dagster.collect.feedback import read_feedback

    (tmp_path / "prompt_feedback.parquet").write_bytes(b"not parquet")
    return [error_of(read_feedback, tmp_path / "prompt_feedback.parquet")]


@probe(18)
def _review_decisions_from_a_foreign_file(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.review import read_decisions_file

    decisions, foreign = tmp_path / "decisions.csv", tmp_path / "foreign.csv"
    pd.DataFrame({"content_hash": ["aaaa1111", "bbbb2222"], "decision": ["accept", "maybe"]}).to_csv(
        decisions, index=False
    )
    pd.DataFrame({"id": [1]}).to_csv(foreign, index=False)
    return [error_of(read_decisions_file, foreign), error_of(read_decisions_file, decisions)]


@probe(37)
def _asset_input_missing_or_unreadable(tmp_path, monkeypatch):
    from dagster import AssetKey, build_input_context
    from upath import UPath

    from resources import ParquetIOManager

    manager = ParquetIOManager(base_dir=str(tmp_path)).create_io_manager(None)
    context = build_input_context(asset_key=AssetKey("numbers"))
    target = UPath(tmp_path) / "numbers.parquet"
    missing = error_of(manager.load_from_path, context, target)
    target.write_bytes(b"not parquet")
    return [missing, error_of(manager.load_from_path, context, target)]


@probe(43)
def _profile_asking_for_cuda_on_a_cpu_machine(tmp_path, monkeypatch):
    import torch

    from opengrok_dagster.profiles import load_profile, require_devices

    if torch.cuda.is_available():
        pytest.skip("the error of a machine without CUDA")
    return [error_of(require_devices, load_profile("gpu")), cli_error("run", "--profile", "gpu")]


@probe(46)
def _run_config_file_with_resources_no_asset_or_a_misspelt_field(tmp_path, monkeypatch):
    from opengrok_dagster.profiles import load_run_config

    resources, no_asset, misspelt = (tmp_path / name for name in ("resources.yaml", "no-asset.yaml", "misspelt.yaml"))
    resources.write_text("resources: {teacher: {config: {model: x}}}\n")
    no_asset.write_text("ops:\n  lora_checkpont: {config: {max_steps: 3}}\n")
    misspelt.write_text("ops:\n  lora_checkpoint: {config: {max_stepz: 3}}\n")
    return [
        error_of(load_run_config, resources),
        cli_error("run", "--config", str(no_asset)),
        cli_error("run", "--config", str(misspelt)),
    ]


def _posts_shard_error(tmp_path, key: str, path: str) -> str:
    from opengrok_dagster.posts.sources import PostShard, read_shard

    return error_of(read_shard, PostShard(key=key, path=path), tmp_path)


@probe(62)
def _posts_shard_matching_no_file(tmp_path, monkeypatch):
    return [_posts_shard_error(tmp_path, "gone", "nowhere/*.jsonl")]


@probe(63)
def _posts_file_without_the_text_column(tmp_path, monkeypatch):
    (tmp_path / "x.csv").write_text("body\nhello\n")
    return [_posts_shard_error(tmp_path, "x", "x.csv")]


@probe(64)
def _posts_shard_without_text(tmp_path, monkeypatch):
    (tmp_path / "e.jsonl").write_text('{"text": "  "}\n')
    return [_posts_shard_error(tmp_path, "e", "e.jsonl")]


@functools.cache
def _student_tokenizer():
    from transformers import AutoTokenizer

    from opengrok_dagster.offline_model import check_offline_model, offline_model_dir

    return AutoTokenizer.from_pretrained(str(check_offline_model(offline_model_dir())))


def _training_job(tmp_path, device: str = "cpu", **config):
    from opengrok_dagster.offline_model import offline_model_dir
    from opengrok_dagster.training.config import TrainingConfig
    from opengrok_dagster.training.device import Placement
    from opengrok_dagster.training.job import TrainingJob

    placement = Placement(device, "fp32" if device == "cpu" else "fp16")
    return TrainingJob("hard", str(offline_model_dir()), tmp_path / "hard", TrainingConfig(**config), placement)


@probe(24)
def _no_usable_validation_examples(tmp_path, monkeypatch):
    from opengrok_dagster.training.data import load_training_data

    table = mask_table(_student_tokenizer())
    return [error_of(load_training_data, table[table["split"] == "train"], _student_tokenizer(), 48)]


@probe(25)
def _lora_targets_the_student_lacks(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from opengrok_dagster.training.setup import require_lora_targets

    shape = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, num_hidden_layers=1, **shape))
    return [error_of(require_lora_targets, model, ["qkv_proj"])]


@probe(27)
def _qlora_without_cuda_or_bitsandbytes(tmp_path, monkeypatch):
    from opengrok_dagster.training.job import require_training_options

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("the error of a machine without bitsandbytes")
    return [
        error_of(require_training_options, _training_job(tmp_path, load_in_4bit=True)),
        error_of(require_training_options, _training_job(tmp_path, "cuda", load_in_4bit=True)),
    ]


@probe(28)
def _tracker_without_its_package(tmp_path, monkeypatch):
    from opengrok_dagster.training.job import require_training_options

    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("the error of a machine without mlflow")
    return [error_of(require_training_options, _training_job(tmp_path, report_to="mlflow"))]


@probe(45)
def _profile_field_unknown_or_of_the_wrong_type(tmp_path, monkeypatch):
    from assets.training import LoraCheckpointConfig
    from opengrok_dagster.profiles import load_profile, with_profile_defaults

    unknown, wrong_type = tmp_path / "unknown.yaml", tmp_path / "wrong-type.yaml"
    unknown.write_text("ops:\n  lora_checkpoint: {config: {max_stepz: 3}}\n")
    wrong_type.write_text("ops:\n  lora_checkpoint: {config: {max_steps: many}}\n")

    def read(path):
        return with_profile_defaults("lora_checkpoint", load_profile(str(path)))(LoraCheckpointConfig)

    return [error_of(read, unknown), error_of(read, wrong_type)]


@probe(52)
def _kd_alpha_without_targets(tmp_path, monkeypatch):
    from opengrok_dagster.training.trainer import train_lora

    job = _training_job(tmp_path, kd_alpha=0.5, max_length=48)
    return [error_of(train_lora, job, mask_table(_student_tokenizer()), log=lambda _: None)]


@probe(19)
def _spacy_model_not_installed(tmp_path, monkeypatch):
    from opengrok_dagster.masks.linguistics import load_spacy

    return [error_of(load_spacy, "en_core_web_lg")]


@probe(20)
def _empty_response_in_the_filtered_set(tmp_path, monkeypatch):
    from opengrok_dagster.masks.builder import build_mask_table
    from opengrok_dagster.masks.config import MaskConfig
    from opengrok_dagster.masks.linguistics import load_spacy
    from tests.test_masks import filtered_frame

    frame = filtered_frame(["Fine prompt.", "Another prompt."], ["A response.", "   "], splits=["train", "train"])
    nlp = load_spacy(MaskConfig().spacy_model)
    return [error_of(build_mask_table, frame, _student_tokenizer(), nlp, MaskConfig())]


@probe(21)
def _tokenizer_without_offsets_or_chat_template(tmp_path, monkeypatch):
    from transformers import BertTokenizerLegacy, PreTrainedTokenizerFast

    from opengrok_dagster.masks.render import ChatRenderer
    from opengrok_dagster.masks.tokenizer import require_offsets

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\ncats\n", encoding="utf-8")
    bare = PreTrainedTokenizerFast(tokenizer_object=_student_tokenizer().backend_tokenizer, unk_token="[UNK]")
    return [error_of(require_offsets, BertTokenizerLegacy(str(tmp_path / "vocab.txt"))), error_of(ChatRenderer, bare)]


@probe(23)
def _mask_table_of_another_tokenizer(tmp_path, monkeypatch):
    from opengrok_dagster.masks.tokenizer import require_same_tokenizer

    return [error_of(require_same_tokenizer, "gpt2@0123456789abcdef", _student_tokenizer())]


@probe(38)
def _broken_lora_checkpoint_manifest(tmp_path, monkeypatch):
    from opengrok_dagster.training.manifest import MANIFEST_COLUMNS, adapter_dirs, manifest_frame

    outcome = dict.fromkeys(MANIFEST_COLUMNS, 0) | {"mask_mode": "soft", "adapter_dir": "/ckpt/soft"}
    return [error_of(adapter_dirs, {"soft": manifest_frame(outcome).drop(columns="adapter_dir")})]


@probe(48)
def _evaluation_device_not_there(tmp_path, monkeypatch):
    import torch

    from opengrok_dagster.evaluation.local import LocalStudent

    if torch.cuda.is_available():
        pytest.skip("the error of a machine without CUDA")
    return [error_of(LocalStudent, str(tmp_path / "never-loaded"), device="cuda")]


@probe(7)
def _provisioned_model_file_changed(tmp_path, monkeypatch):
    import json

    from opengrok_dagster.offline_model import PROVENANCE_FILE, _sha256, check_offline_model

    model_dir = tmp_path / "models" / "SmolLM2-135M-Instruct"
    model_dir.mkdir(parents=True)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"weights")
    (model_dir / PROVENANCE_FILE).write_text(json.dumps({"files": {"model.safetensors": _sha256(weights)}}))
    weights.write_bytes(b"weightz")
    return [error_of(check_offline_model, model_dir)]


def _unreachable_teacher_error(base_url: str) -> str:
    """What the client raises for an endpoint that refuses every connection."""
    from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint

    async def ask():
        limits = ClientLimits(backoff_initial_s=0.001, backoff_max_s=0.01)  # the default 3 failures in a row
        async with TeacherClient(TeacherEndpoint(base_url, "grok-test", "sk-canary"), limits=limits) as client:
            return await client.complete([{"role": "user", "content": "hi"}])

    return error_of(asyncio.run, ask())


@probe(74)
def _teacher_endpoint_that_is_not_there(tmp_path, monkeypatch):
    from opengrok_dagster.offline.server import free_loopback_port

    return [_unreachable_teacher_error(f"http://127.0.0.1:{free_loopback_port()}/v1")]


@probe(75)
def _credentials_in_the_endpoint_url(tmp_path, monkeypatch):
    from opengrok_dagster.offline.server import free_loopback_port
    from opengrok_dagster.redact import redact_url

    refused = _unreachable_teacher_error(
        f"http://user:KEY-canary@127.0.0.1:{free_loopback_port()}/v1?api_key=KEY-canary"
    )
    assert "KEY-canary" not in refused and "http://***@127.0.0.1:" in refused, refused
    return [redact_url("https://user:KEY@host/v1?api_key=KEY")]


@probe(77)
def _posts_file_in_another_encoding(tmp_path, monkeypatch):
    from opengrok_dagster.posts.sources import load_posts_catalogue

    (tmp_path / "export.csv").write_bytes("text\nfirst post\ncaf\u00e9 au lait\n".encode("cp1252"))
    catalogue = tmp_path / "posts.yaml"
    catalogue.write_text("shards:\n  - key: a\n    path: a.jsonl\n    encoding: klingon\n")
    return [_posts_shard_error(tmp_path, "sheet", "export.csv"), error_of(load_posts_catalogue, catalogue)]


@probe(78)
def _posts_line_that_is_not_a_record(tmp_path, monkeypatch):
    (tmp_path / "p.jsonl").write_text('{"id": 1, "text": "one"}\n{"id": 2, "text": "cut off\n')
    (tmp_path / "r.csv").write_text("id,text\n1,fine\n2,bad,extra\n")
    return [_posts_shard_error(tmp_path, "p", "p.jsonl"), _posts_shard_error(tmp_path, "r", "r.csv")]


@probe(83)
def _promote_and_labelling_settings(tmp_path, monkeypatch):
    from assets.labelling import PostLabelsConfig

    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    return [
        cli_error("promote", "best"),
        _promoted_student_error(tmp_path, manual="hard"),
        error_of(PostLabelsConfig(tasks=[]).domain_config),
        error_of(PostLabelsConfig(sample=-1).domain_config),
    ]


@probe(84)
def _export_with_nothing_promoted(tmp_path, monkeypatch):
    from opengrok_dagster.labelling.promotion import Promotion, promotion_record
    from opengrok_dagster.layout import HomeLayout

    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    never_materialised = cli_error("export")
    nothing = Promotion(
        None, "none", "nothing promoted: no adapter qualifies", "tweeteval_sentiment", "macro_f1", 0.0, "calibrated"
    )
    record = HomeLayout(tmp_path).asset_path("promoted_student")
    record.parent.mkdir(parents=True)
    promotion_record(nothing, None).to_parquet(record)
    return [never_materialised, cli_error("export")]


@probe(85)
def _serve_without_an_export_or_on_a_taken_port(tmp_path, monkeypatch):
    from opengrok_dagster.layout import HomeLayout
    from opengrok_dagster.offline.export import EXPORT_RECORD

    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    no_export = cli_error("serve")
    HomeLayout(tmp_path).student_export_dir.mkdir(parents=True)
    (HomeLayout(tmp_path).student_export_dir / EXPORT_RECORD).write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        return [no_export, cli_error("serve", "--port", str(taken.getsockname()[1]))]


@probe(86)
def _unknown_mask_scope_selection_and_strength(tmp_path, monkeypatch):
    from assets.masks import MaskTablesConfig

    return [error_of(MaskTablesConfig(scope="answer", selection="chosen", strength=1.5).domain_config)]


@probe(87)
def _headline_scoring_not_run_or_unknown(tmp_path, monkeypatch):
    from assets.evaluation import EvalReportConfig

    return [
        error_of(EvalReportConfig(scorings=["raw"]).domain_config),
        error_of(EvalReportConfig(scorings=["sampled"], headline_scoring="sampled").domain_config),
    ]


def _promoted_student_error(home, manual=None, lora_checkpoint=None, student="/no/student/needed", frame=None):
    """What the promoted_student asset fails with, invoked directly on ``home`` (no run, no instance)."""
    from dagster import build_asset_context

    from assets.labelling import PromotedStudentConfig, promoted_student
    from opengrok_dagster.labelling.promotion import write_manual_choice
    from opengrok_dagster.layout import HomeLayout
    from opengrok_dagster.settings import CONFIG_DIR
    from resources import OpenGrokPaths, StudentResource
    from tests.test_labelling import report

    if manual:
        write_manual_choice(HomeLayout(home).promotion_choice_path, manual)
    paths = OpenGrokPaths(home=str(home), topic_catalogue=str(CONFIG_DIR / "topics.yaml"))
    inputs = dict(
        eval_report=report(("lora:none", 0.031, -0.005, 0.072)) if frame is None else frame,
        lora_checkpoint=lora_checkpoint or {},
        paths=paths,
        student=StudentResource(model=student),
    )
    return error_of(lambda: list(promoted_student(build_asset_context(), config=PromotedStudentConfig(), **inputs)))


@probe(80)
def _labelling_with_nothing_promoted(tmp_path, monkeypatch):
    from assets.labelling import _promoted_checkpoint
    from opengrok_dagster.labelling.promotion import PromotionConfig, choose, promotion_record
    from tests.test_labelling import report

    nothing = choose(report(("lora:none", 0.031, -0.005, 0.072)), {"none"}, PromotionConfig())
    return [error_of(_promoted_checkpoint, promotion_record(nothing, None))]


@probe(81)
def _promoting_an_adapter_of_another_base_or_tokenizer(tmp_path, monkeypatch, tiny_student, tokenizer):
    from opengrok_dagster.evaluation.local import find_checkpoints
    from opengrok_dagster.labelling.promotion import require_compatible
    from opengrok_dagster.masks.tokenizer import tokenizer_fingerprint
    from opengrok_dagster.training.manifest import MANIFEST_COLUMNS, manifest_frame
    from tests.conftest import write_adapter
    from tests.test_labelling import report

    other_base = write_adapter(tiny_student, tmp_path / "hard", "hard", recorded_base="/models/Qwen2-0.5B")
    manifest = manifest_frame(
        dict.fromkeys(MANIFEST_COLUMNS, 0) | {"mask_mode": "hard", "adapter_dir": str(other_base)}
    )
    significant = report(("lora:hard", 0.06, 0.02, 0.1))
    refused_base = _promoted_student_error(tmp_path, None, {"hard": manifest}, tiny_student, significant)
    own = write_adapter(tiny_student, tmp_path / "none", "none")
    other_tokenizer = tokenizer.__class__.from_pretrained(tiny_student)
    other_tokenizer.add_tokens(["<a-token-the-student-lacks>"])
    other_tokenizer.save_pretrained(own)
    [checkpoint], _ = find_checkpoints({"none": own}, ("none",))
    return [refused_base, error_of(require_compatible, checkpoint, tiny_student, tokenizer_fingerprint(tokenizer))]


@probe(82)
def _posts_shard_changing_during_labelling(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from dagster import AssetMaterialization, DagsterInstance

    from assets.labelling import posts_unchanged_guard

    with DagsterInstance.ephemeral() as instance:
        guard = posts_unchanged_guard(SimpleNamespace(instance=instance), "mine")
        guard(0)  # unchanged: labelling goes on
        instance.report_runless_asset_event(AssetMaterialization("posts", partition="mine"))
        return [error_of(guard, 2)]


@probe(49)
def _logprobs_that_are_not_the_chat_completions_list(tmp_path, monkeypatch):
    from dagster import build_asset_context

    from assets.distillation import KDTargetsConfig, kd_targets
    from opengrok_dagster.filtering.chain import example_id
    from opengrok_dagster.offline_model import offline_model_dir
    from opengrok_dagster.settings import CONFIG_DIR
    from resources import OpenGrokPaths, StudentResource

    key = {"prompt_id": "p1", "teacher_model": "grok-4", "sampling_key": "t0.7", "round": "2026-11-24"}
    example = example_id(*key.values())
    (tmp_path / "assets" / "raw_responses" / key["round"]).mkdir(parents=True)
    raw = pd.DataFrame([key | {"response": "Fine.", "logprobs": '{"content": [truncated'}])
    raw.to_parquet(tmp_path / "assets" / "raw_responses" / key["round"] / "climate.parquet")
    table = mask_table(_student_tokenizer(), train=1, validation=0).assign(example_id=example)
    texts = {"system_prompt": None, "prompt": "How does it feel?", "response": "Fine."}
    inputs = dict(
        mask_tables=table,
        filtered_responses=pd.DataFrame([{"example_id": example, "round": key["round"]} | texts]),
        student=StudentResource(model=str(offline_model_dir())),  # checked by _student_tokenizer
        paths=OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
    )
    return [error_of(lambda: list(kd_targets(build_asset_context(), config=KDTargetsConfig(), **inputs)))]


def _kd_targets_error(tmp_path, targets_of: Callable) -> str:
    """What the fine-tune (train_lora, before it loads the model) says of ``targets_of(kd_targets)``."""
    from opengrok_dagster.distill.targets import KDTargets
    from tests.test_distill_training import kd_table

    table = mask_table(_student_tokenizer(), train=2, validation=1)
    return error_of(KDTargets.of, targets_of(kd_table(table, _student_tokenizer())), table, _student_tokenizer())


@probe(50)
def _kd_targets_of_another_tokenizer(tmp_path, monkeypatch):
    return [_kd_targets_error(tmp_path, lambda kd: kd.assign(tokenizer_fingerprint="gpt2@0123456789abcdef"))]


@probe(51)
def _kd_targets_aligned_to_older_mask_rows(tmp_path, monkeypatch):
    def stale(kd):
        kd.loc[0, "input_ids_digest"] = "0" * 16
        return kd

    return [_kd_targets_error(tmp_path, stale)]


@probe(68)
def _annotation_settings_and_no_posts(tmp_path, monkeypatch):
    from assets.collection import _posts_of
    from opengrok_dagster.collect.annotation import annotation_count, build_annotation_prompts
    from opengrok_dagster.settings import CONFIG_DIR
    from resources import OpenGrokPaths
    from tests.test_annotation import post_frame

    paths = OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml"))
    return [  # the prompts asset fails with each of these as its one line
        error_of(_posts_of, paths, "music", ["music"]),
        error_of(annotation_count, 12, 1.5),
        error_of(build_annotation_prompts, post_frame(), "music", 2, ("tweet_topic",), "xml", 0),
    ]


@probe(70)
def _annotation_that_does_not_validate(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.annotations import parse_annotation

    post = "Loving the new Apple store in Paris with Taylor Swift tonight"
    answers = {"invalid_json": '{"label": "positive"', "schema_mismatch": '{"topics": ["music"], "extra": 1}'}
    tasks = {"invalid_json": "tweeteval_sentiment", "schema_mismatch": "tweet_topic"}
    return [parse_annotation(tasks[reason], answer, post).reason for reason, answer in answers.items()]


@probe(71)
def _annotation_outside_the_vocabulary_or_the_post(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.annotations import parse_annotation

    post = "Loving the new Apple store in Paris with Taylor Swift tonight"
    answers = [  # the reason each answer is rejected with, as the filter records it
        ("tweeteval_sentiment", '{"label": "mixed"}'),
        ("wnut17", '{"entities": [{"type": "person", "text": "Ed Sheeran"}]}'),
        ("tweeteval_sentiment", "It could be either."),
        ("tweeteval_sentiment", "positive or negative"),
        ("wnut17", "person: Taylor Swift\nsomething else entirely"),
        ("tweeteval_sentiment", "  "),
    ]
    return [parse_annotation(task, answer, post).reason for task, answer in answers]


def _lora_checkpoint_error(home, mode: str, table, **config) -> str:
    """What the lora_checkpoint asset fails with before it trains, invoked directly (no run, no subprocess)."""
    from dagster import build_asset_context

    from assets.training import LoraCheckpointConfig, lora_checkpoint
    from opengrok_dagster.settings import CONFIG_DIR
    from resources import HubResource, OpenGrokPaths, StudentResource, TrainingResource

    inputs = dict(
        mask_tables=table,
        paths=OpenGrokPaths(home=str(home), topic_catalogue=str(CONFIG_DIR / "topics.yaml")),
        student=StudentResource(model=str(home / "student-never-loaded")),
        training=TrainingResource(device="cpu"),
        hub=HubResource(token=None),
    )
    context = build_asset_context(partition_key=mode)
    return error_of(lambda: list(lora_checkpoint(context, config=LoraCheckpointConfig(**config), **inputs)))


@probe(41)
def _push_to_hub_without_a_token(tmp_path, monkeypatch):
    table = mask_table(_student_tokenizer(), train=2, validation=1)
    return [_lora_checkpoint_error(tmp_path, "paper", table, push_to_hub="me/opengrok-{mask_mode}")]


@probe(47)
def _mask_tables_cut_at_another_max_length(tmp_path, monkeypatch):
    table = mask_table(_student_tokenizer(), train=2, validation=1).assign(max_length=64)
    return [_lora_checkpoint_error(tmp_path, "hard", table, max_length=48)]


@probe(53)
def _kd_alpha_before_kd_targets_was_materialised(tmp_path, monkeypatch):
    table = mask_table(_student_tokenizer(), train=2, validation=1)
    return [_lora_checkpoint_error(tmp_path, "hard", table, kd_alpha=0.5)]


@probe(32)
def _adapter_trained_on_another_base_model(tmp_path, monkeypatch, tiny_student):
    from opengrok_dagster.evaluation.local import LocalStudent, read_checkpoint
    from tests.conftest import write_adapter

    base = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    adapter = write_adapter(tiny_student, tmp_path / "soft", "soft", recorded_base=base)
    return [error_of(LocalStudent, str(tiny_student), [read_checkpoint(adapter, "soft")])]


@probe(88)
def _task_sampled_too_small_to_measure(tmp_path, monkeypatch, tiny_student):
    from opengrok_dagster.evaluation.local import LocalStudent
    from opengrok_dagster.evaluation.runner import Evaluation, EvaluationConfig

    if not SHARED_DATA.is_dir():
        pytest.skip("shared/data is not beside this checkout")
    config = EvaluationConfig(
        tasks=("wnut17",),
        task_examples={},
        ner_examples=6,
        scorings=("raw",),
        headline_scoring="raw",
        min_items={"ner": 100},
    )
    return Evaluation(config, LocalStudent(str(tiny_student)), [], log=lambda _: None).run(None).notes


@probe(79)
def _remote_teacher_without_its_key_or_model_variable(tmp_path, monkeypatch):
    from tests.conftest import generative_only_profile

    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # the CLI defaults it to $OPENGROK_HOME/dagster_home
    monkeypatch.setenv("OPENGROK_PROFILE", str(generative_only_profile(tmp_path)))
    # The prompts' defaults are the profile's at their first import: where an earlier probe imported them, the
    # run would materialise every shard of the default posts catalogue first: here there is one of one post.
    (tmp_path / "one.jsonl").write_text('{"text": "one post"}\n')
    (tmp_path / "posts.yaml").write_text("shards:\n  - key: one\n    path: one.jsonl\n")
    monkeypatch.setenv("OPENGROK_POSTS_CATALOGUE", str(tmp_path / "posts.yaml"))
    monkeypatch.setenv("OPENGROK_TEACHER_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENGROK_TEACHER_MODEL", "grok-test")
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    without_key = cli_error("run", "--topics", "climate", "--collect-only")
    monkeypatch.setenv("XAI_API_KEY", "any")
    monkeypatch.delenv("OPENGROK_TEACHER_MODEL")  # read by Dagster as an EnvVar when the run starts
    return [without_key, cli_error("run", "--topics", "climate", "--collect-only")]


TEACHER = "http://teacher.test/v1"


def _teacher_answer(reply, sampling=None):
    """The client's result (or refusal) for one chat completion a transport fake answers with ``reply``."""
    from opengrok_dagster.collect.client import ClientLimits, SamplingParams, TeacherClient, TeacherEndpoint

    limits = ClientLimits(max_attempts=3, backoff_initial_s=0.001, backoff_max_s=0.01, timeout_s=0.5)

    async def ask():
        endpoint = TeacherEndpoint(TEACHER, "grok-test", "sk-test")
        async with TeacherClient(endpoint, sampling or SamplingParams(max_tokens=64), limits) as client:
            return await client.complete([{"role": "user", "content": "hi"}])

    with respx.mock:
        route = respx.post(f"{TEACHER}/chat/completions").mock(side_effect=reply)
        try:
            return asyncio.run(ask()), route.call_count
        except Exception as exc:  # noqa: BLE001 - the refusal is the answer here
            return str(exc), route.call_count


def _completion(content="fine", finish_reason="stop", **message) -> httpx.Response:
    choice = {"message": {"content": content, **message}, "finish_reason": finish_reason}
    return httpx.Response(200, json={"id": "c", "model": "m", "choices": [choice]})


@probe(10)
def _failing_endpoint(tmp_path, monkeypatch):
    result, calls = _teacher_answer(lambda request: httpx.Response(503))
    assert not result.ok and calls == 3, (result, calls)
    return [result.error]


@probe(55)
def _provider_refusal(tmp_path, monkeypatch):
    from opengrok_dagster.filtering.checks import anomaly_reasons

    answers = [
        _completion(None, "content_filter"),
        _completion(None, refusal="I can't help with that."),
        _completion(None),
        httpx.Response(200, json={"id": "c", "model": "m", "choices": []}),
    ]
    anomalies = []
    for answer in answers:
        result, calls = _teacher_answer(lambda request, answer=answer: answer)
        assert result.ok and calls == 1, (result, calls)  # paid for and final: not retried
        anomalies.append(result.anomaly)
    return anomalies + [reason for anomaly in anomalies for reason in anomaly_reasons(anomaly)[0]]


@probe(60)
def _endpoint_without_logprobs(tmp_path, monkeypatch):
    from opengrok_dagster.collect.client import SamplingParams

    refused, _ = _teacher_answer(lambda request: _completion(), SamplingParams(top_logprobs=3))
    return [refused]


@probe(69)
def _endpoint_refusing_response_format(tmp_path, monkeypatch):
    import json

    from opengrok_dagster.collect.annotation import build_annotation_prompts, complete_prompt
    from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
    from tests.test_annotation import post_frame

    def reply(request):
        if json.loads(request.content)["response_format"]["type"] == "json_schema":
            return httpx.Response(400, json={"error": "response_format json_schema is not supported"})
        return _completion('{"label": "positive"}')

    row = build_annotation_prompts(post_frame(1), "music", 1, ("tweeteval_sentiment",), "json_schema", 0)[0]

    async def ask():
        limits = ClientLimits(max_attempts=2, backoff_initial_s=0.001, backoff_max_s=0.01, timeout_s=0.5)
        async with TeacherClient(TeacherEndpoint(TEACHER, "grok-test", "k"), limits=limits) as client:
            return await complete_prompt(client, row)

    with respx.mock:
        route = respx.post(f"{TEACHER}/chat/completions").mock(side_effect=reply)
        result = asyncio.run(ask())
    asked = [json.loads(call.request.content)["response_format"]["type"] for call in route.calls]
    assert result.ok and asked == ["json_schema", "json_object"], (result, asked)
    return asked + [result.response_format]  # the modes asked, in order, and the one stored with the answer


@probe(58)
def _collection_expected_to_exceed_todays_budget(tmp_path, monkeypatch):
    from assets.collection import _daily_budget_check
    from opengrok_dagster.collect.plan import CollectionEstimate
    from opengrok_dagster.settings import CONFIG_DIR
    from resources import OpenGrokPaths, TeacherResource

    estimate = CollectionEstimate("climate", 12, 12, 600, 1200, 3072, 0.05, 0.2, "tokenizer", "max_tokens")
    paths = OpenGrokPaths(home=str(tmp_path), topic_catalogue=str(CONFIG_DIR / "topics.yaml"))
    check = _daily_budget_check(TeacherResource(daily_budget_usd=0.01), paths, estimate)  # as the prompts asset does
    assert not check.passed
    return [check.check_name, check.description]


@probe(61)
def _batch_collection_from_an_endpoint_without_the_batch_api(tmp_path, monkeypatch):
    from devtools.batch_server import LoopbackBatchServer
    from opengrok_dagster.collect.batch import collect_batch
    from opengrok_dagster.collect.client import SamplingParams
    from opengrok_dagster.collect.store import ResponseStore
    from tests.test_batch import ROWS, spec

    arguments = (ResponseStore(tmp_path / "r.sqlite"), "2026-11-24", "climate")
    with LoopbackBatchServer() as server:  # under another prefix every route is a 404, as on `transformers serve`
        teacher = spec(server.base_url.replace("/v1", "/chat-only/v1"), sampling=SamplingParams())
        return [error_of(collect_batch, ROWS, teacher, *arguments, log=lambda _: None)]


@probe(66)
def _evaluation_post_among_the_posts(tmp_path, monkeypatch):
    import json

    from dagster import build_asset_context

    from assets.posts import PostsConfig, posts
    from opengrok_dagster.tasks.datasets import read_tweeteval

    if not SHARED_DATA.is_dir():
        pytest.skip("shared/data is not beside this checkout")
    val = read_tweeteval(SHARED_DATA / "tweeteval" / "sentiment" / "val").texts
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["my own post", val[5]]))
    (tmp_path / "posts.yaml").write_text("shards:\n  - key: mine\n    path: mine.jsonl\n")
    config = dict(
        catalogue=str(tmp_path / "posts.yaml"), data_dir=str(SHARED_DATA), eval_tasks=["tweeteval_sentiment"]
    )
    [dropped, _] = posts(build_asset_context(partition_key="mine"), PostsConfig(**config))
    [_, check] = posts(build_asset_context(partition_key="mine"), PostsConfig(**config, drop_eval_posts=False))
    assert dropped.metadata["eval_posts_dropped"].value == 1 and not check.passed
    return [check.check_name, check.description]


@probe(40, integration=True)
def _training_subprocess_that_dies(tmp_path, monkeypatch):
    from tests.test_training_asset import run_checkpoint

    table = mask_table(_student_tokenizer(), train=2, validation=1)
    result = run_checkpoint(tmp_path, table, str(tmp_path / "no-such-model"), mode="paper")  # the entry point dies
    [failure] = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    return [failure.step_failure_data.user_failure_data.description]


@probe(76, integration=True)
def _run_step_failing_on_bad_input(tmp_path, monkeypatch):
    import subprocess
    import sys

    (tmp_path / "cut.jsonl").write_text('{"id": 1, "text": "hello there"}\n{"id": 2, "text": "cut off mid')
    (tmp_path / "posts.yaml").write_text(f"shards:\n  - key: mine\n    path: {tmp_path / 'cut.jsonl'}\n")
    environment = {
        **os.environ,
        "OPENGROK_HOME": str(tmp_path / "home"),
        "OPENGROK_POSTS_CATALOGUE": str(tmp_path / "posts.yaml"),
        "OPENGROK_TEACHER_BASE_URL": "http://127.0.0.1:9/v1",  # never reached: the posts fail first
        "OPENGROK_TEACHER_MODEL": "grok-test",
        "XAI_API_KEY": "unused",
    }
    environment.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "opengrok_dagster.cli", "run", "--topics", "climate", "--modes", "none"]
    run = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    return run.stderr.splitlines()  # as the terminal shows them, each line a message


@probe(57)
def _run_budget_spent_before_the_partition_is_collected(tmp_path, monkeypatch, persistent_instance):
    from devtools.loopback import LoopbackConfig, LoopbackTeacher
    from tests.test_budget import run_partition

    with LoopbackTeacher(LoopbackConfig(completion_tokens=16)) as server:
        stopped = run_partition(persistent_instance, tmp_path, server, budget_usd=0.5)
    assert not (tmp_path / "assets" / "raw_responses").exists()
    return [stopped.failure_data_for_node("raw_responses").user_failure_data.description]


@probe(33)
def _optional_endpoint_unreachable_or_without_its_key(tmp_path, monkeypatch, tiny_student):
    from opengrok_dagster.collect.client import ClientLimits
    from opengrok_dagster.evaluation.api import ApiModel, EndpointSpec
    from opengrok_dagster.evaluation.local import LocalStudent
    from opengrok_dagster.evaluation.runner import Evaluation, EvaluationConfig
    from opengrok_dagster.offline.server import free_loopback_port

    if not SHARED_DATA.is_dir():
        pytest.skip("shared/data is not beside this checkout")
    monkeypatch.delenv("OPENGROK_TEST_ABSENT_KEY", raising=False)
    closed = f"http://127.0.0.1:{free_loopback_port()}/v1"
    specs = [
        EndpointSpec(name="unreachable", base_url=closed, model="gpt-x"),
        EndpointSpec(name="keyless", base_url=closed, model="gpt-y", api_key_env="OPENGROK_TEST_ABSENT_KEY"),
    ]
    fast = ClientLimits(max_attempts=1, backoff_initial_s=0.001, backoff_max_s=0.01)
    models = [dataclasses.replace(ApiModel.from_spec(spec), limits=fast) for spec in specs]
    config = EvaluationConfig(
        tasks=("tweeteval_sentiment",),
        classification_examples=3,
        task_examples={},
        resamples=100,
        baseline_train_examples=50,
        scorings=("raw",),
        headline_scoring="raw",
        min_items={"single": 2},
    )
    return Evaluation(config, LocalStudent(str(tiny_student)), models, log=lambda _: None).run(None).notes


def test_every_row_is_probed_or_listed_as_not_yet():
    rows = set(documented_rows())
    assert not PROBES.keys() & NOT_YET_PROBED
    assert rows == PROBES.keys() | NOT_YET_PROBED, (
        f"rows without a probe: {sorted(rows - PROBES.keys() - NOT_YET_PROBED)}; "
        f"probes for no row: {sorted((PROBES.keys() | NOT_YET_PROBED) - rows)}"
    )


@pytest.mark.parametrize(
    "row", [pytest.param(row, marks=[pytest.mark.integration] if row in INTEGRATION else []) for row in sorted(PROBES)]
)
def test_a_documented_message_is_what_the_user_sees_on_one_line(row, tmp_path, monkeypatch, request):
    documented = quoted_messages(documented_rows()[row])
    assert documented, f"row {row} quotes no message"
    fixtures = {name: request.getfixturevalue(name) for name in list(inspect.signature(PROBES[row]).parameters)[2:]}
    messages = PROBES[row](tmp_path, monkeypatch, **fixtures)
    for message in messages:
        assert "\n" not in message.strip(), f"row {row}: the message is not one line:\n{message}"
    for text in documented:
        assert any(holds(text, message) for message in messages), (
            f"row {row} of docs/bad-inputs.md says {text!r}; the input gives {messages}"
        )


def test_the_reading_of_a_documented_message():
    assert holds(
        "HTTP 401 from <url>/chat/completions: check it", "HTTP 401 from http://x/v1/chat/completions: check it"
    )
    assert not holds("HTTP 401 from <url>/chat/completions: check it", "HTTP 401 from http://x/v1/chat/completions")
    assert holds("a ...; re-run", "a long middle; re-run") and not holds("a ...; re-run", "a; rerun")
    assert quoted_messages("``--topics: 'k' `opengrok topics add k` then``; `second`") == [
        "--topics: 'k' `opengrok topics add k` then",
        "second",
    ]
