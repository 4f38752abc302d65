"""The reference teacher (TF-IDF+LR on gold train), not an LLM: a real OpenAI-compatible loopback server."""

import httpx
import numpy as np
import pytest

from devtools.reference_teacher import NAME, ReferenceTeacher, fit_task
from opengrok_dagster.collect.client import ClientLimits, TeacherEndpoint
from opengrok_dagster.evaluation.api import ApiModel
from opengrok_dagster.posts.leaks import normalise_post
from opengrok_dagster.sns_tasks import task_format


POSITIVE = [
    "love this so much",
    "what a great day",
    "best show ever, love it",
    "so happy and great",
    "amazing win, love",
]
NEGATIVE = [
    "hate this so much",
    "what an awful day",
    "worst show ever, hate it",
    "so sad and awful",
    "terrible loss, hate",
]
NEUTRAL = [
    "the meeting is at noon",
    "the bus leaves at nine",
    "the show airs on friday",
    "report due on monday",
    "store opens at ten",
]
VAL = [("Love this so much!! http://t.co/x", 2), ("the train leaves at noon", 1), ("awful awful day", 0)]


@pytest.fixture()
def data_dir(tmp_path):
    semeval = tmp_path / "semeval2017_task4a"
    semeval.mkdir()
    rows = (
        [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE] + [(t, "neutral") for t in NEUTRAL]
    )
    lines = [f"{i}\t{label}\t{text}" for i, (text, label) in enumerate(rows)]
    (semeval / "twitter-2013train-A.tsv").write_text("\n".join(lines[::2]) + "\n")
    (semeval / "twitter-2016train-A.tsv").write_text("\n".join(lines[1::2]) + "\n")
    sentiment = tmp_path / "tweeteval" / "sentiment"
    sentiment.mkdir(parents=True)
    (sentiment / "mapping.txt").write_text("0\tnegative\n1\tneutral\n2\tpositive\n")
    (sentiment / "val_text.txt").write_text("".join(f"{t}\n" for t, _ in VAL))
    (sentiment / "val_labels.txt").write_text("".join(f"{y}\n" for _, y in VAL))
    return tmp_path


def test_fits_on_gold_train_without_the_eval_posts_or_the_excluded_ones(data_dir):
    classifier = fit_task("tweeteval_sentiment", data_dir)
    assert classifier.dropped_eval_posts == 1  # "love this so much" is also a val post (after normalisation)
    assert classifier.train_posts == 14
    excluded = fit_task(
        "tweeteval_sentiment",
        data_dir,
        exclude=frozenset({normalise_post("What a great day!"), normalise_post("the bus leaves at nine")}),
    )
    assert excluded.train_posts == 12
    with pytest.raises(ValueError, match="does not find entities"):
        fit_task("wnut17", data_dir)


@pytest.mark.integration
def test_answers_annotation_prompts_over_the_openai_api(data_dir):
    fmt = task_format("tweeteval_sentiment")
    posts = ["so happy, love it", "awful, hate it", "the meeting is on friday"]
    with ReferenceTeacher.fit(data_dir, tasks=("tweeteval_sentiment",)) as teacher:
        assert NAME in teacher.describe()
        model = ApiModel(
            "reference",
            lambda: TeacherEndpoint(teacher.base_url, "reference", None),
            NAME,
            ClientLimits(max_concurrency=2),
        )
        answers = model.complete_all([fmt.messages(p) for p in posts], max_tokens=8).texts
        assert [fmt.parse(a, p).labels for a, p in zip(answers, posts)] == [(2,), (0,), (1,)]
        expected = teacher.classifiers[0].pipeline.predict(posts)
        assert [fmt.words.index(a) for a in answers] == list(np.asarray(expected))
        structured = httpx.post(
            f"{teacher.base_url}/chat/completions",
            json={
                "model": "reference",
                "messages": fmt.messages(posts[0]),
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "label", "schema": fmt.json_schema()},
                },
            },
        ).json()["choices"][0]["message"]["content"]
        assert fmt.parse_json(structured, posts[0]).labels == (2,)
        refused = httpx.post(
            f"{teacher.base_url}/chat/completions",
            json={
                "model": "reference",
                "messages": [{"role": "user", "content": "Write a short post about the weather."}],
            },
        )
        assert refused.status_code == 400 and "answers only label prompts" in refused.json()["error"]["message"]
        assert teacher.served == 4
