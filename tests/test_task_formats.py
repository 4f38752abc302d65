"""The task-format module: the evaluation asks with its messages and reads its answers, and every answer it
writes parses back to the same annotation (free text and JSON), with reason codes for what cannot be used."""

import json

import pytest

from opengrok_dagster.tasks.formats import REASONS, TASK_FORMATS, Annotation, task_format
from opengrok_dagster.tasks.specs import label_words, read_split, task_spec
from tests.conftest import SHARED_DATA


POST = "Loving the new Apple store in Paris with Taylor Swift tonight"


@pytest.mark.parametrize("name", sorted(TASK_FORMATS))
def test_the_evaluation_reads_the_formats_vocabulary_from_its_data(name):
    spec, fmt = task_spec(name), task_format(name)
    data = read_split(spec, SHARED_DATA, spec.eval_path)
    names = data.entity_types if spec.kind == "ner" else data.label_names
    assert fmt.kind == spec.kind and fmt.question == spec.question
    assert tuple(names) == fmt.labels and label_words(spec, names) == list(fmt.words)


def test_a_split_with_other_labels_is_refused_for_an_annotated_task():
    with pytest.raises(ValueError, match=r"task btc: the split's labels \['LOC', 'PER'\] are not the task's vocab"):
        label_words(task_spec("btc"), ("LOC", "PER"))


@pytest.mark.parametrize(
    "name, annotation",
    [
        ("tweeteval_sentiment", Annotation(labels=(2,))),
        ("tweet_topic", Annotation(labels=(3, 11))),
        ("wnut17", Annotation(spans=(("corporation", "Apple"), ("location", "Paris"), ("person", "Taylor Swift")))),
        ("btc", Annotation(spans=(("organisation", "Apple"), ("location", "Paris")))),
        ("btc", Annotation()),
    ],
)
def test_every_answer_parses_back_as_free_text_and_as_json(name, annotation):
    fmt = task_format(name)
    assert fmt.parse(fmt.answer(annotation), POST) == annotation
    structured = (
        {"label": fmt.words[annotation.labels[0]]}
        if fmt.kind == "classification"
        else (
            {"topics": [fmt.words[i] for i in annotation.labels]}
            if fmt.kind == "multilabel"
            else {"entities": [{"type": kind, "text": text} for kind, text in annotation.spans]}
        )
    )
    assert fmt.parse_json(json.dumps(structured), POST) == annotation
    assert fmt.parse_json(f"```json\n{json.dumps(structured)}\n```", POST) == annotation


def test_messages_are_the_evaluations_prompt():
    fmt = task_format("tweeteval_sentiment")
    user = fmt.messages(f"  {POST} ")[1]["content"]
    asked = "What is the sentiment of this post? Answer with exactly one of: negative, neutral, positive."
    assert user == f"{asked}\nPost: {POST}"
    assert "type one of: person, organisation, location" not in task_format("wnut17").messages(POST)[1]["content"]
    assert "type one of: location, organisation, person." in task_format("btc").messages(POST)[1]["content"]


@pytest.mark.parametrize(
    "name, answer, structured, reason",
    [
        ("tweeteval_sentiment", "  ", False, "empty_answer"),
        ("tweeteval_sentiment", "It is hard to say.", False, "no_label"),
        ("tweeteval_sentiment", "positive or negative", False, "several_labels"),
        ("tweeteval_sentiment", "{'label': 'positive'}", True, "invalid_json"),
        ("tweeteval_sentiment", '["positive"]', True, "invalid_json"),
        ("tweeteval_sentiment", '{"sentiment": "positive"}', True, "schema_mismatch"),
        ("tweeteval_sentiment", '{"label": "mixed"}', True, "label_outside_vocabulary"),
        ("tweet_topic", '{"topics": []}', True, "schema_mismatch"),
        ("tweet_topic", '{"topics": ["music", "politics"]}', True, "label_outside_vocabulary"),
        ("wnut17", "person: Taylor Swift\nsomething else entirely", False, "unparsed_lines"),
        ("wnut17", "person: Ed Sheeran", False, "span_not_in_post"),
        ("wnut17", '{"entities": [{"type": "city", "text": "Paris"}]}', True, "label_outside_vocabulary"),
        ("wnut17", '{"entities": [{"type": "location"}]}', True, "schema_mismatch"),
        ("wnut17", '{"entities": [{"type": "location", "text": "London"}]}', True, "span_not_in_post"),
    ],
)
def test_unusable_answers_get_a_reason_code(name, answer, structured, reason):
    fmt = task_format(name)
    parsed = fmt.parse_json(answer, POST) if structured else fmt.parse(answer, POST)
    assert parsed.reason == reason and reason in REASONS


@pytest.mark.parametrize("name", sorted(TASK_FORMATS))
def test_json_schema_is_strict_and_offers_the_vocabulary(name):
    fmt = task_format(name)
    schema = fmt.json_schema()
    assert schema["additionalProperties"] is False and schema["required"] == list(schema["properties"])
    assert set(fmt.words) <= set(json.dumps(schema["properties"]).replace('"', "\n").splitlines())


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match=r"no annotation format for task 'emotion'; annotated tasks: tweeteval_sen"):
        task_format("emotion")
