"""Hub splits (hf:<dataset>:<config>:<split>) read into the same records as the files, through datasets.load_dataset.

The dataset here is a local folder laid out like a hub dataset repository (Parquet files under data/, class
labels in the schema), made from the real files in ../shared/data; load_dataset treats it as it treats a
downloaded hub repository. Fetching over the network is the one part this machine cannot exercise.
"""

import datasets as hf_datasets
import pytest

from opengrok_dagster.evaluation.config import EvaluationConfig
from opengrok_dagster.evaluation.local import LocalStudent
from opengrok_dagster.evaluation.runner import Evaluation
from opengrok_dagster.tasks import datasets
from opengrok_dagster.tasks.datasets import DatasetError, read_conll, read_tweeteval
from opengrok_dagster.tasks.hub import HubSplit
from opengrok_dagster.tasks.specs import read_split, task_spec
from tests.conftest import SHARED_DATA


HATE = SHARED_DATA / "tweeteval" / "hate"


@pytest.fixture(autouse=True)
def datasets_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def hub_repository(root, splits: dict[str, dict], features: hf_datasets.Features):
    for split, columns in splits.items():
        hf_datasets.Dataset.from_dict(columns, features=features).to_parquet(
            root / "data" / f"{split}-00000-of-00001.parquet"
        )
    return root


@pytest.fixture
def hate_repository(tmp_path):
    # The hub names TweetEval's classes non-hate/hate; the files (and the task's label words) say not-hate/hate.
    features = hf_datasets.Features(
        {"text": hf_datasets.Value("string"), "label": hf_datasets.ClassLabel(names=["non-hate", "hate"])}
    )
    splits = {}
    for split in ("train", "val"):
        local = read_tweeteval(HATE / split)
        splits["validation" if split == "val" else split] = {
            "text": local.texts[:60],
            "label": local.labels[:60].tolist(),
        }
    return hub_repository(tmp_path / "tweet_eval_hate", splits, features)


def test_hub_classification_split_equals_the_file_and_keeps_the_tasks_label_names(hate_repository):
    from_hub = read_split(task_spec("tweeteval_hate"), None, f"hf:{hate_repository}::validation")
    from_files = read_tweeteval(HATE / "val")
    assert from_hub.texts == from_files.texts[:60] and from_hub.labels.tolist() == from_files.labels[:60].tolist()
    assert from_hub.label_names == from_files.label_names == ("not-hate", "hate")
    assert from_hub.source == f"hf:{hate_repository}::validation" and len(from_hub.version) == 12


def test_hub_ner_split_gives_the_same_tags_as_the_conll_file(tmp_path):
    local = read_conll(SHARED_DATA / "wnut17" / "emerging.dev.conll")
    names = ["O", *(f"{p}-{t}" for t in local.entity_types for p in "BI")]
    features = hf_datasets.Features(
        {
            "tokens": hf_datasets.Sequence(hf_datasets.Value("string")),
            "ner_tags": hf_datasets.Sequence(hf_datasets.ClassLabel(names=names)),
        }
    )
    columns = {"tokens": local.tokens[:40], "ner_tags": [[names.index(tag) for tag in row] for row in local.tags[:40]]}
    repository = hub_repository(tmp_path / "wnut_17", {"test": columns}, features)
    from_hub = read_split(task_spec("wnut17"), None, f"hf:{repository}::test")
    assert from_hub.tokens == local.tokens[:40] and from_hub.tags == local.tags[:40]
    assert from_hub.entity_types == local.entity_types


@pytest.mark.parametrize(
    "text, message",
    [
        ("hf:cardiffnlp/tweet_eval:sentiment", "must read hf:<dataset>:<config>:<split>"),
        ("hf::sentiment:test", "must read hf:<dataset>:<config>:<split>"),
    ],
)
def test_malformed_hub_split_names_the_expected_form(text, message):
    with pytest.raises(DatasetError, match=message):
        HubSplit.parse(text)


def test_unloadable_hub_split_names_the_split_and_what_to_check(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"hf:.*absent::test: could not be loaded from the Hugging Face hub .*dataset id, config and split",
    ):
        read_split(task_spec("tweeteval_hate"), None, f"hf:{tmp_path / 'absent'}::test")


def test_hub_split_with_another_number_of_classes_is_refused(tmp_path):
    sentiment = read_tweeteval(SHARED_DATA / "tweeteval" / "sentiment" / "val")
    features = hf_datasets.Features(
        {"text": hf_datasets.Value("string"), "label": hf_datasets.ClassLabel(names=list(sentiment.label_names))}
    )
    repository = hub_repository(
        tmp_path / "sentiment",
        {"test": {"text": sentiment.texts[:5], "label": sentiment.labels[:5].tolist()}},
        features,
    )
    with pytest.raises(
        DatasetError,
        match=r"has 3 classes \['negative', 'neutral', 'positive'\], but the task has 2 \['not-hate', 'hate'\]",
    ):
        read_split(task_spec("tweeteval_hate"), None, f"hf:{repository}::test")


def test_evaluation_runs_on_hub_splits_without_a_data_directory(tmp_path, monkeypatch, hate_repository, tiny_student):
    monkeypatch.delenv(datasets.DATA_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(datasets, "SHARED_DATA_FALLBACK", tmp_path / "absent")
    config = EvaluationConfig(
        tasks=("tweeteval_hate", "wnut17"),
        classification_examples=8,
        min_items={"single": 8},
        resamples=100,
        eval_paths={"tweeteval_hate": f"hf:{hate_repository}::validation"},
        train_paths={"tweeteval_hate": (f"hf:{hate_repository}::train",)},
    )
    results = Evaluation(config, LocalStudent(str(tiny_student)), [], log=lambda _: None).run(None)
    (hate,) = results.tasks
    assert hate.name == "tweeteval_hate" and hate.n == 8 and hate.source.startswith("hf:")
    assert {score.model for score in hate.scores} >= {"base", "tfidf-lr:gold"}
    assert any("SNS tasks wnut17 were not evaluated: no data directory" in note for note in results.notes)
