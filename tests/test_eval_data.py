"""Dataset readers on the real files in shared/data (their SOURCE.md counts), and their errors on bad input."""

from pathlib import Path

import numpy as np
import pytest

from opengrok_dagster.tasks import datasets
from opengrok_dagster.tasks.datasets import (
    TOPIC_LABELS,
    DatasetError,
    read_conll,
    read_semeval_tsv,
    read_topic_jsonl,
    read_tweeteval,
    resolve_data_dir,
)
from opengrok_dagster.tasks.specs import TASKS, label_words, read_split, task_spec
from tests.conftest import SHARED_DATA


needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not beside this checkout")


@needs_data
def test_tweeteval_sentiment_val_matches_its_source_counts():
    data = read_tweeteval(SHARED_DATA / "tweeteval" / "sentiment" / "val")
    assert len(data.texts) == 2000 and data.label_names == ("negative", "neutral", "positive")
    assert set(np.unique(data.labels)) == {0, 1, 2}


@needs_data
def test_stance_targets_share_the_parent_mapping_and_irony_has_no_final_newline_in_mapping():
    stance = read_tweeteval(SHARED_DATA / "tweeteval" / "stance" / "abortion" / "train")
    assert len(stance.texts) == 587 and stance.label_names == ("none", "against", "favor")
    irony = read_tweeteval(SHARED_DATA / "tweeteval" / "irony" / "val")
    assert len(irony.texts) == 955 and irony.label_names == ("non_irony", "irony")


@needs_data
def test_semeval_tsv_quirks_trailing_tab_no_final_newline_and_json_escapes():
    folder = SHARED_DATA / "semeval2017_task4a"
    test2016 = read_semeval_tsv(folder / "twitter-2016test-A.tsv")
    assert len(test2016.texts) == 20632
    assert np.bincount(test2016.labels).tolist() == [3231, 10342, 7059]
    train2013 = read_semeval_tsv(folder / "twitter-2013train-A.tsv")
    assert len(train2013.texts) == 9684
    assert not any("\\u2019" in text for text in train2013.texts)
    assert any("\u2019" in text for text in train2013.texts)


@needs_data
def test_topic_jsonl_reads_int_and_float_label_fields():
    english = read_topic_jsonl(SHARED_DATA / "tweet_topic_xl" / "en" / "en_train.jsonl")
    spanish = read_topic_jsonl(SHARED_DATA / "tweet_topic_xl" / "es" / "es_train.jsonl")
    for data in (english, spanish):
        assert data.labels.shape == (180, 19) and data.label_names == TOPIC_LABELS
        assert 1 <= data.labels.sum(axis=1).min() and data.labels.sum(axis=1).max() <= 5


@needs_data
@pytest.mark.parametrize(
    "relative, sentences, tokens, types",
    [
        (
            "wnut17/emerging.dev.conll",
            1009,
            15733,
            {"person", "location", "group", "creative-work", "corporation", "product"},
        ),
        (
            "wnut17/wnut17train.conll",
            3394,
            62730,
            {"person", "location", "group", "creative-work", "corporation", "product"},
        ),
        # SOURCE.md counts 1001 blocks and 15027 lines; four lines are empty tokens tagged O, and one block holds
        # nothing else: they carry no text, so the reader drops them.
        ("broad_twitter_corpus/btc.dev", 1000, 15023, {"PER", "ORG", "LOC"}),
        ("tweebank_ner/dev.bio", 710, 11759, {"PER", "ORG", "LOC", "MISC"}),
    ],
)
def test_conll_readers_match_source_counts(relative, sentences, tokens, types):
    data = read_conll(SHARED_DATA / relative)
    assert len(data.tokens) == sentences
    assert sum(map(len, data.tokens)) == tokens
    assert set(data.entity_types) == types
    assert all(len(t) == len(g) for t, g in zip(data.tokens, data.tags))


@needs_data
def test_every_registered_task_reads_its_default_splits():
    for spec in TASKS.values():
        data = read_split(spec, SHARED_DATA, spec.eval_path)
        train = read_split(spec, SHARED_DATA, spec.train_paths, train=True)
        if spec.kind != "ner":
            assert train.label_names == data.label_names, spec.name
            assert len(label_words(spec, data.label_names)) == len(data.label_names)


def test_text_and_label_line_counts_must_agree(tmp_path):
    (tmp_path / "mapping.txt").write_text("0\tnegative\n1\tpositive")
    (tmp_path / "val_text.txt").write_text("good\nbad\nugly\n")
    (tmp_path / "val_labels.txt").write_text("1\n0\n")
    with pytest.raises(DatasetError, match=r"val_text.txt has 3 lines but .*val_labels.txt has 2"):
        read_tweeteval(tmp_path / "val")


def test_a_label_outside_the_mapping_names_file_and_line(tmp_path):
    (tmp_path / "mapping.txt").write_text("0\tnegative\n1\tpositive\n")
    (tmp_path / "val_text.txt").write_text("good\nbad\n")
    (tmp_path / "val_labels.txt").write_text("1\n7\n")
    with pytest.raises(DatasetError, match=r"val_labels.txt:2: label '7' is not an id"):
        read_tweeteval(tmp_path / "val")


def test_conll_line_without_tab_and_bad_tag_are_refused(tmp_path):
    (tmp_path / "a.conll").write_text("hello\tO\nworld O\n")
    with pytest.raises(DatasetError, match=r"a.conll:2: expected 'token<TAB>"):
        read_conll(tmp_path / "a.conll")
    (tmp_path / "b.conll").write_text("hello\tPERSON\n")
    with pytest.raises(DatasetError, match=r"b.conll:1: tag 'PERSON' is not BIO"):
        read_conll(tmp_path / "b.conll")


def test_semeval_unknown_label_and_topic_missing_fields_are_refused(tmp_path):
    (tmp_path / "s.tsv").write_text("1\tpositive\tnice\n2\tmixed\tmeh\n")
    with pytest.raises(DatasetError, match=r"s.tsv:2: label 'mixed'"):
        read_semeval_tsv(tmp_path / "s.tsv")
    (tmp_path / "t.jsonl").write_text('{"id": 1, "text": "hi", "music": 1}\n')
    with pytest.raises(DatasetError, match=r"t.jsonl:1: record lacks"):
        read_topic_jsonl(tmp_path / "t.jsonl")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere.conll does not exist"):
        read_conll(tmp_path / "nowhere.conll")


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.DATA_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(datasets, "SHARED_DATA_FALLBACK", tmp_path / "absent")
    assert resolve_data_dir() is None
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(tmp_path / "typo"))
    with pytest.raises(DatasetError, match="OPENGROK_DATA_DIR"):
        resolve_data_dir()


def test_unknown_task_and_label_words_for_absent_labels_are_refused():
    with pytest.raises(DatasetError, match="unknown evaluation task 'sentimnt'"):
        task_spec("sentimnt")
    with pytest.raises(DatasetError, match="label words given for"):
        label_words(task_spec("tweeteval_irony"), ("no", "yes"))


def test_train_and_evaluation_label_mappings_must_agree(tmp_path):
    from opengrok_dagster.evaluation.config import EvaluationConfig
    from opengrok_dagster.evaluation.runner import Evaluation

    folder, other = tmp_path / "tweeteval" / "irony", tmp_path / "other"
    for directory, mapping in ((folder, "0\tnon_irony\n1\tirony\n"), (other, "0\tnon_irony\n1\tirony\n2\tsarcasm\n")):
        directory.mkdir(parents=True)
        (directory / "mapping.txt").write_text(mapping)
    for prefix in (folder / "val", other / "train"):
        Path(f"{prefix}_text.txt").write_text("great\nawful\n")
        Path(f"{prefix}_labels.txt").write_text("1\n0\n")
    config = EvaluationConfig(
        tasks=("tweeteval_irony",),
        data_dir=str(tmp_path),
        train_paths={"tweeteval_irony": ("other/train",)},
        min_items={"single": 1},  # a two-post split: scored, so that its train split is read
    )
    with pytest.raises(
        DatasetError,
        match=r"train split .*train_text.txt\) has labels \['non_irony', 'irony', 'sarcasm'\] but the "
        r"evaluation split has \['non_irony', 'irony'\]",
    ):
        Evaluation(config, None, [], log=lambda _: None).run(None)


def test_data_version_covers_every_file_of_a_split(tmp_path):
    (tmp_path / "a.tsv").write_text("1\tpositive\tnice\n")
    (tmp_path / "b.tsv").write_text("2\tnegative\tawful\n")
    spec = task_spec("tweeteval_sentiment")
    before = read_split(spec, tmp_path, ("a.tsv", "b.tsv"), train=True).version
    (tmp_path / "b.tsv").write_text("2\tneutral\tawful\n")
    after = read_split(spec, tmp_path, ("a.tsv", "b.tsv"), train=True)
    assert len(before) == 12 and after.version != before and after.labels.tolist() == [2, 1]
