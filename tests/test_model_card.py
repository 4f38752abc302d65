"""The adapter's model card: hub-valid metadata from what is known locally, never a local path."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import EvalResult, ModelCard

from opengrok_dagster.evaluation.bootstrap import Distribution
from opengrok_dagster.evaluation.cards import eval_results_for
from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.results import EvaluationResults, ModelScore, TaskResult
from opengrok_dagster.offline_model import HUB_ID, PROVENANCE_FILE
from opengrok_dagster.tasks.specs import TASKS
from opengrok_dagster.training.card import hub_base_model, record_eval_results
from opengrok_dagster.training.config import TrainingConfig
from opengrok_dagster.training.hub import HubPushError, require_token
from opengrok_dagster.training.report import write_model_card


def outcome(base_model: str, mode: str = "soft") -> SimpleNamespace:
    return SimpleNamespace(
        base_model=base_model,
        mask_mode=mode,
        best_val_loss=1.5,
        best_step=4,
        global_step=4,
        early_stopped=False,
        train_examples=16,
        validation_examples=4,
        tokens_per_second=120.0,
        device="cpu (fp32)",
        lora_targets=["q_proj", "v_proj"],
    )


def test_the_base_model_is_named_by_its_hub_id_wherever_that_is_known(tmp_path):
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / PROVENANCE_FILE).write_text("{}")
    cached = tmp_path / "hub" / "models--microsoft--Phi-3-mini-4k-instruct" / "snapshots" / "abc123"
    cached.mkdir(parents=True)
    (cached / "README.md").write_text("---\nlicense: mit\n---\nPhi-3\n")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"_name_or_path": str(bare)}))
    assert hub_base_model(str(offline)) == (HUB_ID, "apache-2.0")
    assert hub_base_model(str(cached)) == ("microsoft/Phi-3-mini-4k-instruct", "mit")
    assert hub_base_model(str(saved)) == ("Qwen/Qwen2.5-0.5B-Instruct", None)
    assert hub_base_model("microsoft/Phi-3-mini-4k-instruct") == ("microsoft/Phi-3-mini-4k-instruct", None)
    assert hub_base_model(str(bare)) == (None, None)
    assert hub_base_model(str(tmp_path / "absent" / "model")) == (None, None)
    broken = tmp_path / "hub" / "models--org--broken-card"
    broken.mkdir()
    (broken / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    assert hub_base_model(str(broken)) == ("org/broken-card", None), "an unreadable base card only hides the license"


def test_card_of_an_adapter_of_the_offline_model(tmp_path):
    base = tmp_path / "models" / "SmolLM2-135M-Instruct"
    base.mkdir(parents=True)
    (base / PROVENANCE_FILE).write_text("{}")
    readme = tmp_path / "README.md"
    write_model_card(readme, outcome(str(base)), TrainingConfig(), {"mask_tables": "0123abcd"})
    card = ModelCard.load(readme)
    assert card.data.base_model == HUB_ID and card.data.license == "apache-2.0"
    assert (card.data.library_name, card.data.pipeline_tag) == ("peft", "text-generation")
    assert "mask-soft" in card.data.tags and card.data.eval_results is None
    assert f'AutoModelForCausalLM.from_pretrained("{HUB_ID}")' in card.text and str(tmp_path) not in readme.read_text()
    assert "`mask_tables`: 0123abcd" in card.text and f"| lora_r | {TrainingConfig().lora_r} |" in card.text


def test_evaluation_results_replace_the_model_index_and_keep_the_card(tmp_path):
    readme = tmp_path / "README.md"
    write_model_card(readme, outcome(str(tmp_path / "local")), TrainingConfig(), {})
    text = ModelCard.load(readme).text

    def result(value):
        return EvalResult(
            task_type="text-classification",
            dataset_type="cardiffnlp/tweet_eval",
            dataset_name="tweeteval_sentiment",
            dataset_config="sentiment",
            dataset_split="test",
            metric_type="macro_recall",
            metric_value=value,
        )

    record_eval_results(readme, "soft", [result(0.41)])
    record_eval_results(readme, "soft", [result(0.52)])
    card = ModelCard.load(readme)
    assert [(r.dataset_type, r.dataset_config, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("cardiffnlp/tweet_eval", "sentiment", "macro_recall", 0.52)
    ]
    assert card.data.base_model is None and card.text == text
    assert not list(tmp_path.glob(".*partial")), "written atomically, nothing left beside it"


def test_a_card_peft_wrote_gets_a_model_name_with_its_scores(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("---\nlibrary_name: peft\n---\n# Model Card for Model ID\n")
    score = EvalResult(
        task_type="token-classification",
        dataset_type="wnut17",
        dataset_name="wnut17",
        metric_type="f1",
        metric_value=0.2,
    )
    for _ in range(2):  # the second update reads the model-index the first wrote
        record_eval_results(readme, "none", [score])
    card = ModelCard.load(readme)
    assert card.data.model_name == "opengrok-none" and card.data.eval_results[0].metric_value == 0.2


def test_a_push_without_a_token_is_refused_without_touching_the_network():
    with pytest.raises(HubPushError, match="push_to_hub to me/x needs a Hugging Face write token: set HF_TOKEN"):
        require_token(None, "me/x", "HF_TOKEN")
    assert require_token("hf_abc", "me/x", "HF_TOKEN") == "hf_abc"


def test_scores_become_model_index_entries_naming_hub_splits_and_never_local_paths():
    def scored(model, **point):
        return ModelScore(model, Distribution(point, {k: np.array([v]) for k, v in point.items()}), n=4)

    hub_task = TaskResult(
        TASKS["tweeteval_sentiment"],
        "tweeteval_sentiment",
        "macro_recall",
        "hf:cardiffnlp/tweet_eval:sentiment:test",
        "v1",
        100,
        4,
        scores=[scored("lora:hard", macro_recall=0.5, accuracy=float("nan")), scored("base", macro_recall=0.3)],
    )
    local_task = TaskResult(
        TASKS["wnut17"],
        "wnut17",
        "f1",
        "/data/wnut17/emerging.dev.conll",
        "v2",
        50,
        4,
        scores=[scored("lora:hard", f1=0.2)],
    )
    results = EvaluationResults(EvaluationConfig(), None, [hub_task, local_task], [], [], 1.0)
    entries = [
        (r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_value)
        for r in eval_results_for(results, "lora:hard")
    ]
    assert entries == [
        ("text-classification", "cardiffnlp/tweet_eval", "sentiment", "test", "macro_recall", 0.5),
        ("token-classification", "wnut17", None, None, "f1", 0.2),
    ]
    assert eval_results_for(results, "lora:soft") == []
