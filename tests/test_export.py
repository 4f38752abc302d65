"""`opengrok export` and `opengrok serve`: the promoted student merged for plain transformers, scoring as the
adapter does, served on the embedded teacher's OpenAI-compatible machinery; and their one-line refusals."""

import json
import socket

import httpx
import numpy as np
import pandas as pd
import pytest

from opengrok_dagster.cli import main
from opengrok_dagster.evaluation.api import ApiModel, EndpointSpec
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.local import LocalStudent, find_checkpoints
from opengrok_dagster.evaluation.runner import Evaluation
from opengrok_dagster.labelling.promotion import Promotion, promotion_record
from opengrok_dagster.layout import HomeLayout
from opengrok_dagster.offline.export import EXPORT_RECORD, ExportError, export_merged, export_server
from opengrok_dagster.tasks.formats import task_format
from opengrok_dagster.tasks.specs import task_spec
from tests.conftest import SHARED_DATA, adapters, write_adapter


def promote(home, tiny_student, promoted=True):
    """The promoted_student record of ``home`` naming its hard adapter (or nothing), as the asset writes it."""
    adapter = write_adapter(tiny_student, adapters(home)["hard"], "hard")
    [checkpoint], _ = find_checkpoints({"hard": adapter}, ("hard",))
    decision = Promotion(
        "hard" if promoted else None,
        "rule" if promoted else "none",
        "lora:hard +0.060 [0.020, 0.100] ..." if promoted else "nothing promoted: no adapter qualifies",
        "tweeteval_sentiment",
        "macro_f1",
        0.0,
        "calibrated",
    )
    path = HomeLayout(home).asset_path("promoted_student")
    path.parent.mkdir(parents=True, exist_ok=True)
    promotion_record(decision, checkpoint if promoted else None).to_parquet(path)
    return checkpoint, pd.read_parquet(path).iloc[0].to_dict()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_student):
    home = tmp_path_factory.mktemp("home")
    checkpoint, record = promote(home, tiny_student)
    return checkpoint, export_merged(record, tiny_student, HomeLayout(home).student_export_dir)


def test_the_merged_model_scores_labels_as_the_adapter_does(exported, tiny_student, one_torch_thread):
    from transformers import AutoModelForCausalLM

    checkpoint, export_dir = exported
    assert (export_dir / "model.safetensors").is_file() and (export_dir / "tokenizer.json").is_file()
    assert "Merged export" in (export_dir / "README.md").read_text()
    assert json.loads((export_dir / EXPORT_RECORD).read_text())["adapter_version"] == checkpoint.version
    assert not hasattr(AutoModelForCausalLM.from_pretrained(export_dir), "peft_config")  # plain transformers
    sentiment = task_format("tweeteval_sentiment")
    messages = [sentiment.messages(f"post {i}: {'great' if i % 2 else 'awful'} game tonight") for i in range(20)]
    with_adapter = LocalStudent(tiny_student, [checkpoint])
    with with_adapter.using(checkpoint.variant):
        expected = with_adapter.label_logprobs(messages, list(sentiment.words))
    merged = LocalStudent(str(export_dir)).label_logprobs(messages, list(sentiment.words))
    assert np.abs(merged - expected).max() < 1e-4
    assert np.abs(expected - LocalStudent(tiny_student).label_logprobs(messages, list(sentiment.words))).max() > 1e-3


@pytest.mark.integration
def test_the_export_answers_an_annotation_prompt_over_the_openai_api(exported, tmp_path):
    _, export_dir = exported
    with export_server(export_dir, None, tmp_path / "server.log") as server:
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={
                "model": server.model_id,
                "messages": task_format("tweeteval_sentiment").messages("what a match!"),
                "max_tokens": 4,
                "temperature": 0,
            },
            timeout=120,
        )
        # the project's evaluation scores it as it scores any API model (the teacher included)
        config = EvaluationConfig(
            tasks=("tweeteval_sentiment",),
            task_examples={},
            classification_examples=4,
            min_items={"single": 1},  # four posts: enough to see the export scored, not to measure it
            baseline_train_examples=50,
            resamples=100,
            api_max_tokens=4,
            data_dir=str(SHARED_DATA),
        )
        spec = EndpointSpec(name="student-export", base_url=server.base_url, model=server.model_id)
        evaluation = Evaluation(config, None, [ApiModel.from_spec(spec)], log=lambda message: None)
        scored = evaluation.run_task(task_spec("tweeteval_sentiment"), SHARED_DATA)
    assert response.status_code == 200
    assert isinstance(response.json()["choices"][0]["message"]["content"], str)
    assert "student-export" in {score.model for score in scored.scores} and not evaluation.failed_endpoints


def test_export_with_nothing_promoted_is_refused_in_one_line(tmp_path, tiny_student, monkeypatch, capsys):
    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    monkeypatch.setenv("OPENGROK_STUDENT_MODEL", tiny_student)
    assert main(["export"]) == 2
    assert capsys.readouterr().err.startswith("opengrok: error: no promoted student: ")
    promote(tmp_path, tiny_student, promoted=False)
    capsys.readouterr()  # building the adapter reports its progress
    assert main(["export"]) == 2
    assert capsys.readouterr().err == (
        "opengrok: error: no promoted student (nothing promoted: no adapter qualifies); choose one with "
        "`opengrok promote MODE`\n"
    )
    assert not HomeLayout(tmp_path).student_export_dir.exists()
    _, record = promote(tmp_path, tiny_student)
    with pytest.raises(ExportError, match="lora:hard was trained on .*, not on the student '/models/Qwen2-0.5B'"):
        export_merged(record, "/models/Qwen2-0.5B", HomeLayout(tmp_path).student_export_dir)
    assert not HomeLayout(tmp_path).student_export_dir.exists()


def test_serve_without_an_export_or_on_a_taken_port_is_refused_in_one_line(exported, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENGROK_HOME", str(tmp_path))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"opengrok: error: no exported student at {HomeLayout(tmp_path).student_export_dir}: "
        "run `opengrok export` first\n"
    )
    _, export_dir = exported
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("OPENGROK_HOME", str(export_dir.parent))
        assert main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (
        f"opengrok: error: port {port} is in use: choose another with --port, or stop what listens there\n"
    )
