"""The reference teacher (TF-IDF+LR on gold train), not an LLM: a real OpenAI-compatible loopback server."""

import json
import math

import httpx
import numpy as np
import pytest

from opengrok_dagster.collect.client import ClientLimits, TeacherEndpoint
from opengrok_dagster.collect.result import SamplingParams
from opengrok_dagster.distill.align import StudentVocabulary, align_example, parse_teacher_logprobs
from opengrok_dagster.evaluation.api import ApiModel
from opengrok_dagster.masks.render import ChatRenderer
from opengrok_dagster.offline.reference_teacher import NAME, ReferenceTeacher, TaskClassifier, fit_task, fold_of
from opengrok_dagster.posts.leaks import normalise_post
from opengrok_dagster.tasks.baselines import train_tfidf_classifier
from opengrok_dagster.tasks.datasets import resolve_data_dir
from opengrok_dagster.tasks.formats import task_format
from opengrok_dagster.tasks.specs import read_split, task_spec


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


PEOPLE, PLACES, FIRMS = (
    ("Obama", "Merkel", "Adele", "Messi"),
    ("Paris", "London", "Berlin", "Leeds"),
    ("Google", "Tesco"),
)
VERBS = ("met", "saw", "called", "followed")


def _conll(sentences) -> str:
    return "".join("".join(f"{token}\t{tag}\n" for token, tag in sentence) + "\n" for sentence in sentences)


@pytest.fixture()
def btc_dir(tmp_path):
    """A tiny Broad Twitter Corpus: 'I <verb> <person> in <place>' and '<firm> opens in <place>' sentences."""
    train = [
        [("I", "O"), (verb, "O"), (person, "B-PER"), ("in", "O"), (place, "B-LOC"), ("today", "O")]
        for verb in VERBS
        for person in PEOPLE
        for place in PLACES
    ] + [[(firm, "B-ORG"), ("opens", "O"), ("in", "O"), (place, "B-LOC")] for firm in FIRMS for place in PLACES]
    corpus = tmp_path / "broad_twitter_corpus"
    corpus.mkdir()
    (corpus / "btc.train").write_text(_conll(train))
    (corpus / "btc.dev").write_text(_conll(train[:1]))  # also a train sentence: dropped from the tagger's fit
    return tmp_path


def test_entity_tagger_fits_on_gold_train_without_the_eval_sentences_and_answers_in_the_task_format(btc_dir):
    fmt = task_format("btc")
    tagger = fit_task("btc", btc_dir)
    assert tagger.dropped_eval_posts == 1 and tagger.train_posts == 4 * 4 * 4 + 2 * 4 - 1
    post = "I saw Adele in Berlin today"
    assert fmt.parse(tagger.answer(post, structured=False), post).spans == (
        ("person", "Adele"),
        ("location", "Berlin"),
    )
    assert fmt.parse_json(tagger.answer(post, structured=True), post).spans == (
        ("person", "Adele"),
        ("location", "Berlin"),
    )
    assert tagger.answer("nothing to see here", structured=False) == "none"
    excluded = fit_task("btc", btc_dir, exclude=frozenset({normalise_post("I saw Adele in Berlin today")}))
    assert excluded.train_posts == tagger.train_posts - 1
    with pytest.raises(ValueError, match="no logprobs for entity answers"):
        tagger.answer_with_logprobs(post, False, 3)


@pytest.mark.integration
def test_answers_entity_prompts_over_the_openai_api(btc_dir):
    fmt = task_format("btc")
    post = "Tesco opens in Leeds"
    with ReferenceTeacher.fit(btc_dir, tasks=("btc",)) as teacher:
        response = httpx.post(
            f"{teacher.base_url}/chat/completions", json={"model": "reference", "messages": fmt.messages(post)}
        ).json()
        answer = response["choices"][0]["message"]["content"]
        assert fmt.parse(answer, post).spans == (("organisation", "Tesco"), ("location", "Leeds"))
        asked = {"model": "reference", "messages": fmt.messages(post), "logprobs": True, "top_logprobs": 2}
        refused = httpx.post(f"{teacher.base_url}/chat/completions", json=asked)
        assert refused.status_code == 400 and "no logprobs for entity answers" in refused.text


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
        expected = teacher.classifiers[0].pipelines[0].predict(posts)
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
        # logprobs through the pipeline's own client, in the shape the raw responses' logprobs column holds
        sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8, top_logprobs=3)
        results = model.results([fmt.messages(p) for p in posts], sampling)
        for post, result in zip(posts, results):
            (label,) = json.loads(result.logprobs)
            expected = teacher.classifiers[0].pipelines[0].predict_proba([post])[0]
            assert label["token"] == result.text and result.completion_tokens == 1
            assert {alt["token"]: math.exp(alt["logprob"]) for alt in label["top_logprobs"]} == pytest.approx(
                dict(zip(fmt.words, expected))
            )
        too_many = httpx.post(
            f"{teacher.base_url}/chat/completions",
            json={"model": "reference", "messages": fmt.messages(posts[0]), "logprobs": True, "top_logprobs": 21},
        )
        assert too_many.status_code == 400 and "top_logprobs must be between 0 and 20" in too_many.text


def _prompt(fmt, post: str, structured: bool = False) -> str:
    prompt = fmt.messages(post)[-1]["content"]
    return f"{prompt} {fmt.json_instruction()}" if structured else prompt


def test_label_token_logprobs_are_the_classifiers_class_probabilities_and_align_to_the_student(data_dir, tokenizer):
    fmt = task_format("tweeteval_sentiment")
    teacher = ReferenceTeacher.fit(data_dir, tasks=("tweeteval_sentiment",))
    classifier = teacher.classifiers[0]
    vocabulary = StudentVocabulary.of(tokenizer)
    for post in ["so happy, love it", "awful, hate it", "the meeting is on friday"]:
        expected = classifier.pipelines[0].predict_proba([post])[0]  # columns = classes 0, 1, 2 = fmt.words
        text, content = teacher.answer_with_logprobs(_prompt(fmt, post), False, top_logprobs=5)
        assert text == teacher.answer(_prompt(fmt, post))
        (label,) = content
        assert label["token"] == text and bytes(label["bytes"]) == text.encode()
        probabilities = {alt["token"]: math.exp(alt["logprob"]) for alt in label["top_logprobs"]}
        assert probabilities == pytest.approx(dict(zip(fmt.words, expected)))
        assert label["logprob"] == pytest.approx(math.log(expected.max()))
        assert [alt["token"] for alt in label["top_logprobs"]][0] == text  # best first: the answer is the argmax

        structured, pieces = teacher.answer_with_logprobs(_prompt(fmt, post, structured=True), False, top_logprobs=2)
        assert fmt.parse_json(structured, post).labels == (fmt.words.index(text),)
        assert "".join(piece["token"] for piece in pieces) == structured
        scaffolding = [piece for piece in pieces if piece["token"] != text]
        assert len(pieces) == 3 and all(piece["logprob"] == 0.0 for piece in scaffolding)
        assert all([alt["token"] for alt in piece["top_logprobs"]] == [piece["token"]] for piece in scaffolding)
        assert len(pieces[1]["top_logprobs"]) == 2  # top_logprobs=2: the two likeliest labels

        # the label token is one student token: the student's KD target there is the classifier's distribution
        rendered = ChatRenderer(tokenizer).render(None, _prompt(fmt, post), text)
        encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        start = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > rendered.spans["response"][0])
        aligned = align_example(
            encoded["input_ids"],
            rendered.text,
            rendered.spans["response"],
            start,
            parse_teacher_logprobs(json.dumps(content), "reference"),
            vocabulary,
        )
        assert (
            aligned.aligned_tokens == 1
            and encoded["input_ids"][aligned.positions[0]] == vocabulary.by_bytes[text.encode()]
        )
        targets = dict(zip(aligned.token_ids[0], np.exp(aligned.logprobs[0])))
        assert targets == pytest.approx({vocabulary.by_bytes[w.encode()]: p for w, p in zip(fmt.words, expected)})
    with pytest.raises(ValueError, match="top_logprobs must be between 0 and 20"):
        teacher.answer_with_logprobs(_prompt(fmt, "so happy"), False, top_logprobs=21)


def test_the_topic_annotator_names_about_as_many_topics_a_post_as_the_gold_labels():
    """At a threshold of 0.3 the class-balanced one-vs-rest probabilities named 8 of the 19 topics a post (gold: 1.6),
    and students trained on those answers learned to name them all."""
    data_dir = resolve_data_dir()
    spec = task_spec("tweet_topic")
    val = read_split(spec, data_dir, spec.eval_path)
    classifier = fit_task("tweet_topic", data_dir)
    named = np.mean([len(classifier.annotate(text).labels) for text in val.texts])
    assert 1 <= named <= 2 * val.labels.sum(axis=1).mean()


@pytest.mark.filterwarnings("ignore:Label not:UserWarning")  # topics no toy post has: sklearn's constant columns
def test_topic_labels_after_the_first_offer_the_topics_not_yet_named_renormalised():
    fmt = task_format("tweet_topic")
    texts = ["goal match win league", "film music concert art", "goal film match music", "stock market price"]
    labels = np.zeros((4, len(fmt.words)), dtype=bool)
    sports, music, business = (
        fmt.words.index("sports"),
        fmt.words.index("music"),
        fmt.words.index("business & entrepreneurs"),
    )
    labels[[0, 2], sports] = labels[[1, 2], music] = labels[3, business] = True
    classifier = TaskClassifier(fmt, "val", [train_tfidf_classifier(texts, labels, 0)], 4, 0, topic_threshold=0.01)
    post = "goal film match music"
    probabilities = classifier.probabilities(post)
    text, content = classifier.answer_with_logprobs(post, False, top_logprobs=len(fmt.words))
    annotation = classifier.annotate(post)
    assert text == fmt.answer(annotation) and len(annotation.labels) > 1
    assert "".join(entry["token"] for entry in content) == text
    named = []
    for entry in content:
        if entry["token"] == ",":
            assert entry["logprob"] == 0.0
            continue
        word = entry["token"].removeprefix(" ")
        assert entry["token"] == (" " + word if named else word)  # the space goes with the label, as BPE splits it
        remaining = [i for i in range(len(fmt.words)) if fmt.words[i] not in named]
        offered = {fmt.words[i]: probabilities[i] / probabilities[remaining].sum() for i in remaining}
        assert {alt["token"].removeprefix(" "): math.exp(alt["logprob"]) for alt in entry["top_logprobs"]} == (
            pytest.approx(offered)
        )
        named.append(word)
    assert named == [fmt.words[i] for i in annotation.labels]


def test_cross_fitting_answers_each_post_with_the_half_fitted_without_it(data_dir):
    """``folds=2`` (the embedded teacher's annotator): pipeline k is exactly a fit on the posts outside fold k, and a
    post is answered by its own fold's pipeline, so a train post is labelled by a classifier that never saw it."""
    classifier = fit_task("tweeteval_sentiment", data_dir, folds=2)
    rows = [(t, 2) for t in POSITIVE] + [(t, 0) for t in NEGATIVE] + [(t, 1) for t in NEUTRAL]
    kept = [(t, y) for t, y in rows if normalise_post(t) != normalise_post(VAL[0][0])]  # the val post is dropped
    assert classifier.train_posts == len(kept) and len(classifier.pipelines) == 2
    folds = {fold_of(t, 2) for t, _ in kept}
    assert folds == {0, 1}  # the toy split has posts in both folds, so both halves are tested
    for fold in (0, 1):
        outside = [(t, y) for t, y in kept if fold_of(t, 2) != fold]
        expected = train_tfidf_classifier([t for t, _ in outside], np.array([y for _, y in outside]), 0)
        posts = [t for t, _ in kept]
        assert np.allclose(classifier.pipelines[fold].predict_proba(posts), expected.predict_proba(posts))
    for post, _ in kept:
        own = classifier.pipelines[fold_of(post, 2)]
        assert np.allclose(classifier.probabilities(post)[own.classes_.astype(int)], own.predict_proba([post])[0])


@pytest.mark.integration
def test_the_annotating_front_answers_label_prompts_and_passes_the_rest_to_the_embedded_llm(data_dir):
    """The embedded teacher's default: label prompts by the reference teacher (fitted at the first one, once for
    concurrent first prompts), everything else (generative prompts, other routes) by the server behind it."""
    import concurrent.futures

    from devtools.loopback import LoopbackTeacher
    from opengrok_dagster.offline.annotating_front import AnnotatingFront

    fmt = task_format("tweeteval_sentiment")
    fits = []
    annotator = ReferenceTeacher.on_demand(data_dir, tasks=("tweeteval_sentiment", "tweet_topic"))
    fit = annotator.fit_on_demand
    annotator.fit_on_demand = lambda name: fits.append(name) or fit(name)
    upstream = LoopbackTeacher()
    with AnnotatingFront(upstream, annotator) as front:
        url = f"{front.base_url}/chat/completions"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            asked = [
                {"model": "m", "messages": fmt.messages(post)} for post in ("so happy, love it", "awful, hate it")
            ]
            labelled = list(pool.map(lambda body: httpx.post(url, json=body, timeout=30).json(), asked * 2))
        assert fits == ["tweeteval_sentiment"]  # one fit for four concurrent first prompts; topics never asked
        assert [fmt.parse(r["choices"][0]["message"]["content"], "").labels for r in labelled] == [(2,), (0,)] * 2
        generative = {"model": "m", "messages": [{"role": "user", "content": "Write a post about football."}]}
        answer = httpx.post(url, json=generative, timeout=30)
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        assert len(upstream.requests) == 1  # only the generative prompt reached the LLM
    assert annotator.served == 4
    with pytest.raises(httpx.ConnectError):  # stopping the front stopped the server behind it
        httpx.post(f"{upstream.base_url}/chat/completions", json=generative, timeout=5)
