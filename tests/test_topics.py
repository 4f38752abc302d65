import pytest

from opengrok_dagster.collect.topics import (
    TopicCatalogueError,
    TopicKeyError,
    find_topic,
    load_topic_catalogue,
    validate_topic_key,
)
from opengrok_dagster.settings import CONFIG_DIR


@pytest.mark.parametrize("key", ["climate", "k-pop", "world_cup", "2026-election", "a" * 64])
def test_valid_topic_keys_pass_unchanged(key):
    assert validate_topic_key(key) == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "empty"),
        ("a,b", "commas"),
        ("news/tech", "slashes"),
        ("a|b", "'|'"),
        ("tab\there", "control"),
        ("x" * 65, "limit is 64"),
        ("Climate", "lowercase"),
        ("-leading", "starting with"),
        ("café", "lowercase letters"),
        (42, "must be a string"),
    ],
)
def test_invalid_topic_keys_are_refused_with_the_reason(key, message):
    with pytest.raises(TopicKeyError, match=message):
        validate_topic_key(key)


def test_repository_catalogue_loads():
    topics = load_topic_catalogue(CONFIG_DIR / "topics.yaml")
    assert [t.key for t in topics] == ["climate", "smartphones", "football"]
    assert all(t.events for t in topics)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("topics: [", "not valid YAML"),
        ("other: 1", "non-empty 'topics:' list"),
        ("topics:\n  - key: a/b", "entry 0: topic key 'a/b'"),
        ("topics:\n  - key: a\n  - key: a", "appears twice"),
        ("topics:\n  - name: no key", "needs at least a 'key'"),
        ("topics:\n  - key: a\n    events: oops", "must be a list of strings"),
    ],
)
def test_malformed_catalogue_names_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "topics.yaml"
    path.write_text(content)
    with pytest.raises(TopicCatalogueError, match=message) as error:
        load_topic_catalogue(path)
    assert str(path) in str(error.value)


def test_missing_catalogue_says_what_to_point_at(tmp_path):
    with pytest.raises(TopicCatalogueError, match="does not exist"):
        load_topic_catalogue(tmp_path / "absent.yaml")


def test_topic_added_only_as_partition_gets_a_default_entry():
    topic = find_topic([], "k-pop")
    assert (topic.key, topic.name, topic.events) == ("k-pop", "k pop", ())
