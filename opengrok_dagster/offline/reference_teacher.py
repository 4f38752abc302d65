"""Reference teacher (TF-IDF+LR on gold train), not an LLM: an OpenAI-compatible loopback server of known quality.

No strong LLM runs offline, so the efficacy bench needs a teacher whose skill is known to measure how much of a
teacher's skill the pipeline transfers to the student. This one answers the label prompts of
``opengrok_dagster.tasks.formats`` (the annotation prompts, which are the evaluation's prompts) for sentiment and
topics with the prediction of a TF-IDF + logistic-regression classifier
(``tasks.baselines.train_tfidf_classifier``), and the entity prompts of the BTC (Broad Twitter Corpus) NER
task with a token tagger (logistic regression over each token's spelling and its neighbours', BIO tags,
:class:`EntityTagger`). Both are trained on the task's GOLD train split, never on validation or test: every train
post whose normalised text is also in the task's evaluation split is dropped before fitting
(``posts.leaks.normalise_post``), so its score on that split is not inflated by leaked posts.
A request with ``response_format`` (``json_schema`` or ``json_object``) gets the task's JSON answer, otherwise the
free-text answer the evaluation reads. A prompt it cannot answer (a generative prompt, an unknown question) gets
a 400 naming what it answers.

It is also the embedded teacher's default annotator (``TeacherResource.annotator``, :class:`.annotating_front.
AnnotatingFront`): there it is fitted on demand, per task at its first label prompt, and cross-fitted
(``folds=2``): each post is answered by the half fitted without it, so a user's post that is also a train post
(the offline posts catalogue reads the train splits' texts) gets a label its classifier never saw.

A request with ``logprobs: true`` (and ``top_logprobs: k``, at most 20 as OpenAI allows) gets the answer's tokens
in the OpenAI shape (``choices[0].logprobs.content``), for token-level distillation: each label word is one
token whose ``top_logprobs`` are the classifier's class probabilities (log; ``predict_proba``), the other label
words its alternatives; the JSON or the separator around the labels is scaffolding: logprob 0 (certain), no
alternatives (its one top_logprob is itself). A label word's token carries the space before it, so it spells
what a byte-level BPE student makes one token of (``" positive"`` after a comma; ``"positive"`` at the start of
an answer or after a quote). For topics (several labels) the k-th label's alternatives are the topics not named
before it, their probabilities renormalised over those (the classifier's per-topic probabilities are
one-vs-rest, not one distribution). Entity answers carry no logprobs (a 400 says so).

    python -m devtools.reference_teacher --port 8765            # serves until interrupted
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import uvicorn
from seqeval.metrics.sequence_labeling import get_entities
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from opengrok_dagster.offline.server import free_loopback_port
from opengrok_dagster.offline.serving import ThreadedLoopbackServer, read_body, respond_json
from opengrok_dagster.posts.leaks import normalise_post
from opengrok_dagster.tasks.baselines import train_tfidf_classifier
from opengrok_dagster.tasks.datasets import resolve_data_dir
from opengrok_dagster.tasks.formats import Annotation, TaskFormat, find_labels, task_format
from opengrok_dagster.tasks.specs import read_split, task_spec


NAME = "reference teacher (TF-IDF+LR on gold train), not an LLM"
MODEL_ID = "reference-teacher-tfidf-lr-gold-train"
TASKS = ("tweeteval_sentiment", "tweet_topic", "btc")
POST_MARKER = "\nPost: "
TOP_LOGPROBS_LIMIT = 20  # OpenAI's; xAI allows 8
LOGPROB_FLOOR = -9999.0  # OpenAI's value for a token of (numerically) zero probability: JSON has no -inf


@dataclass
class TaskClassifier:
    """One task's classifier and its answer format (``tasks.formats``): label words, one label or several."""

    format: TaskFormat
    eval_path: str
    pipelines: list  # one per fold: pipelines[k] never saw a post of fold k (one pipeline: fitted on every post)
    train_posts: int
    dropped_eval_posts: int
    # Each topic's one-vs-rest probability (class-balanced LR) against its own decision threshold, 0.5. At 0.3 the
    # TweetTopic val posts got 8.3 topics each (gold 1.6), at 0.5 1.05, at equal micro F1 (0.21 and 0.23).
    topic_threshold: float = 0.5

    def probabilities(self, post: str) -> np.ndarray:
        """``predict_proba`` of ``post``, one column per label word (0 for a class absent from the train split)."""
        pipeline = self.pipelines[fold_of(post, len(self.pipelines))]
        full = np.zeros(len(self.format.words))
        full[pipeline.classes_.astype(int)] = pipeline.predict_proba([post])[0]
        return full

    def annotate(self, post: str) -> Annotation:
        if self.format.kind != "multilabel":
            return Annotation(labels=(int(np.argmax(self.probabilities(post))),))
        probabilities = self.probabilities(post)
        chosen = {int(np.argmax(probabilities)), *np.flatnonzero(probabilities >= self.topic_threshold).tolist()}
        return Annotation(labels=tuple(sorted(chosen)))

    def answer(self, post: str, structured: bool) -> str:
        return self._render(self.annotate(post), structured)

    def _render(self, annotation: Annotation, structured: bool) -> str:
        if not structured:
            return self.format.answer(annotation)
        chosen = [self.format.words[i] for i in annotation.labels]
        (key,) = self.format.json_schema()["required"]
        return json.dumps({key: chosen if self.format.kind == "multilabel" else chosen[0]})

    def answer_with_logprobs(self, post: str, structured: bool, top_logprobs: int) -> tuple[str, list[dict]]:
        """The answer and its ``choices[0].logprobs.content``: label tokens carry the classifier's probabilities."""
        probabilities = self.probabilities(post)
        annotation = self.annotate(post)
        text = self._render(annotation, structured)
        content, cursor, named = [], 0, np.zeros(len(self.format.words), dtype=bool)
        for label in annotation.labels:
            word = self.format.words[label]
            start = text.index(word, cursor)
            space = " " if start > cursor and text[start - 1] == " " else ""  # the student's token holds the space
            if start - len(space) > cursor:
                content.append(_token_entry(text[cursor : start - len(space)], 0.0, top_logprobs and [(None, 0.0)]))
            offered = probabilities * ~named
            offered = offered / offered.sum() if offered.sum() > 0 else offered
            logprobs = np.maximum(np.log(np.maximum(offered, 1e-300)), LOGPROB_FLOOR)
            ranked = sorted(np.flatnonzero(~named), key=lambda i: (-offered[i], i))[:top_logprobs]
            alternatives = [(space + self.format.words[i], float(logprobs[i])) for i in ranked]
            content.append(_token_entry(space + word, float(logprobs[label]), alternatives))
            named[label], cursor = True, start + len(word)
        if cursor < len(text):
            content.append(_token_entry(text[cursor:], 0.0, top_logprobs and [(None, 0.0)]))
        return text, content


def fit_tagger(answer_format: TaskFormat, tokens: list[list[str]], tags: list[list[str]], seed: int) -> object:
    """A BIO tagger pipeline fitted on gold sentences; tags of types outside the format are read as O."""
    known = set(answer_format.labels)
    features = [row for sentence in tokens for row in token_features(sentence)]
    targets = [tag if tag == "O" or tag[2:] in known else "O" for sentence in tags for tag in sentence]
    pipeline = make_pipeline(DictVectorizer(), LogisticRegression(max_iter=300, C=5.0, random_state=seed))
    return pipeline.fit(features, targets)


def fold_of(post: str, folds: int) -> int:
    """The cross-fitting fold of ``post`` (by its normalised text, so a reformatted copy falls in the same fold)."""
    if folds == 1:
        return 0
    return int(hashlib.sha256(normalise_post(post).encode()).hexdigest()[:8], 16) % folds


def token_features(tokens: list[str]) -> list[dict[str, object]]:
    """Each token's spelling (lower case, shape, affixes, @/# and case marks) and its neighbours' words and shapes."""

    def shape(token: str) -> str:
        return re.sub(r"(.)\1+", r"\1", re.sub(r"[A-Z]", "X", re.sub(r"[a-z]", "x", re.sub(r"\d", "d", token))))

    lowered, shapes = [t.lower() for t in tokens], [shape(t) for t in tokens]
    rows = []
    for i, token in enumerate(tokens):
        row = {
            "w": lowered[i],
            "shape": shapes[i],
            "pre3": lowered[i][:3],
            "suf3": lowered[i][-3:],
            "title": token.istitle(),
            "upper": token.isupper(),
            "mark": token[0] if token[0] in "@#" else "",
            "first": i == 0,
        }
        for offset in (-2, -1, 1, 2):
            j = i + offset
            row[f"w{offset}"] = lowered[j] if 0 <= j < len(tokens) else "<edge>"
            row[f"shape{offset}"] = shapes[j] if 0 <= j < len(tokens) else "<edge>"
        rows.append(row)
    return rows


@dataclass
class EntityTagger:
    """One NER task's token tagger (BIO tags by logistic regression over :func:`token_features`) and its answer
    format: the entities it tags, as ``type word: text`` lines or the task's JSON."""

    format: TaskFormat
    eval_path: str
    pipelines: list  # one per fold, as TaskClassifier's
    train_posts: int
    dropped_eval_posts: int

    def annotate(self, post: str) -> Annotation:
        tokens = post.split()
        if not tokens:
            return Annotation()
        pipeline = self.pipelines[fold_of(" ".join(tokens), len(self.pipelines))]
        tags = list(pipeline.predict(token_features(tokens)))
        word_of = dict(zip(self.format.labels, self.format.words))
        return Annotation(
            spans=tuple(
                (word_of[kind], " ".join(tokens[start : end + 1]))
                for kind, start, end in get_entities(tags)
                if kind in word_of
            )
        )

    def answer(self, post: str, structured: bool) -> str:
        annotation = self.annotate(post)
        if not structured:
            return self.format.answer(annotation)
        return json.dumps({"entities": [{"type": kind, "text": text} for kind, text in annotation.spans]})

    def answer_with_logprobs(self, post: str, structured: bool, top_logprobs: int) -> tuple[str, list[dict]]:
        raise ValueError(f"the {NAME} returns no logprobs for entity answers ({self.format.name})")


def fit_task(
    name: str, data_dir: Path, exclude: frozenset[str] = frozenset(), seed: int = 0, folds: int = 1
) -> TaskClassifier | EntityTagger:
    """Fit ``name``'s classifier (or entity tagger) on its gold train split minus every post also in its
    evaluation split, and minus ``exclude`` (normalised texts, e.g. the posts a bench will have it annotate, so it
    labels posts it never saw). With ``folds`` > 1 it is cross-fitted: one pipeline per fold, each fitted on the
    posts of every other fold (:func:`fold_of`), and a post is answered by the pipeline of its own fold."""
    spec, answer_format = task_spec(name), task_format(name)
    train = read_split(spec, data_dir, spec.train_paths, train=True)
    evaluation = read_split(spec, data_dir, spec.eval_path)
    texts_of = (lambda data: [" ".join(t) for t in data.tokens]) if answer_format.kind == "ner" else None
    held = {normalise_post(t) for t in (texts_of(evaluation) if texts_of else evaluation.texts)}
    raw = texts_of(train) if texts_of else train.texts
    normalised = [normalise_post(text) for text in raw]
    keep = [i for i, text in enumerate(normalised) if text not in held and text not in exclude]
    dropped = sum(text in held for text in normalised)
    if answer_format.kind != "ner" and tuple(train.label_names) != answer_format.labels:
        raise ValueError(
            f"{name}: the train split's labels {list(train.label_names)} are not the task format's "
            f"{list(answer_format.labels)}"
        )
    pipelines = []
    for fold in range(folds):
        rows = [i for i in keep if folds == 1 or fold_of(raw[i], folds) != fold]
        if answer_format.kind == "ner":
            sentences, tags = [train.tokens[i] for i in rows], [train.tags[i] for i in rows]
            pipelines.append(fit_tagger(answer_format, sentences, tags, seed))
        else:
            pipelines.append(train_tfidf_classifier([train.texts[i] for i in rows], train.labels[rows], seed))
    kind = EntityTagger if answer_format.kind == "ner" else TaskClassifier
    return kind(answer_format, spec.eval_path, pipelines, len(keep), dropped)


@dataclass
class ReferenceTeacher(ThreadedLoopbackServer):
    """Start with :meth:`start` (or as a context manager); ``served`` counts the prompts answered.

    ``classifiers`` are the fitted tasks; ``fit_on_demand`` (with ``pending``, the task names not fitted yet) fits
    a pending task at its first label prompt (:meth:`on_demand`), so a run that asks about one task pays for one."""

    NAME = NAME  # the module-level name, in start-up errors too

    classifiers: list[TaskClassifier | EntityTagger]
    port: int = field(default_factory=free_loopback_port)
    served: int = 0
    fit_on_demand: Callable[[str], TaskClassifier | EntityTagger] | None = None
    pending: list[str] = field(default_factory=list)

    @classmethod
    def fit(
        cls,
        data_dir: Path | None = None,
        tasks: tuple[str, ...] = TASKS,
        exclude: frozenset[str] = frozenset(),
        seed: int = 0,
    ) -> ReferenceTeacher:
        data_dir = _gold_data_dir(data_dir)
        return cls([fit_task(name, data_dir, exclude, seed) for name in tasks])

    @classmethod
    def on_demand(
        cls, data_dir: Path | None = None, tasks: tuple[str, ...] = TASKS, seed: int = 0, folds: int = 2
    ) -> ReferenceTeacher:
        """Fitted per task at its first prompt, cross-fitted over ``folds`` (the embedded teacher's annotator)."""
        fitter = partial(fit_task, data_dir=_gold_data_dir(data_dir), seed=seed, folds=folds)
        return cls([], fit_on_demand=fitter, pending=list(tasks))

    def __post_init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._fitting = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def describe(self) -> str:
        parts = [
            f"{c.format.name}: {c.train_posts} gold train posts "
            f"({c.dropped_eval_posts} dropped as also in {c.eval_path})"
            for c in self.classifiers
        ]
        return f"{NAME}; " + "; ".join(parts)

    def answers(self, request: dict) -> bool:
        """Whether ``request`` is a chat completion asking a label prompt of a task this teacher answers (fitted or
        pending); decided from the prompt alone, without fitting."""
        try:
            prompt = _user_prompt(request)
        except (KeyError, StopIteration, TypeError):
            return False
        question, marker, _ = prompt.partition(POST_MARKER)
        formats = [c.format for c in self.classifiers] + [task_format(name) for name in self.pending]
        return bool(marker) and any(_asks(question, answer_format) for answer_format in formats)

    def answer(self, prompt: str, structured: bool = False) -> str:
        """The answer to one label prompt; ValueError names what this teacher can answer."""
        classifier, post, structured = self._question(prompt, structured)
        return classifier.answer(post, structured)

    def answer_with_logprobs(self, prompt: str, structured: bool, top_logprobs: int) -> tuple[str, list[dict]]:
        """The answer and its OpenAI-shaped logprobs (``choices[0].logprobs.content``)."""
        if not 0 <= top_logprobs <= TOP_LOGPROBS_LIMIT:
            raise ValueError(f"top_logprobs must be between 0 and {TOP_LOGPROBS_LIMIT}, got {top_logprobs}")
        classifier, post, structured = self._question(prompt, structured)
        return classifier.answer_with_logprobs(post, structured, top_logprobs)

    def _question(self, prompt: str, structured: bool) -> tuple[TaskClassifier | EntityTagger, str, bool]:
        """The classifier a label prompt is for (fitting a pending task now), its post, and whether it asks for JSON."""
        question, marker, post = prompt.partition(POST_MARKER)
        classifier = self._classifier_for(question) if marker else None
        if classifier is not None:
            instruction = classifier.format.json_instruction()
            return classifier, post.removesuffix(instruction).rstrip(), structured or prompt.endswith(instruction)
        known = "; ".join(
            f"{f.name} ({f.question!r})"
            for f in [c.format for c in self.classifiers] + [task_format(name) for name in self.pending]
        )
        raise ValueError(f"the {NAME} answers only label prompts ending in 'Post: <text>' for {known}")

    def _classifier_for(self, question: str) -> TaskClassifier | EntityTagger | None:
        """The fitted classifier whose label question this is, fitting a pending task now (once, however many of
        its first prompts arrive at the same time); None if no task asks it."""

        def fitted():
            return next((c for c in self.classifiers if _asks(question, c.format)), None)

        if (classifier := fitted()) is not None:
            return classifier
        with self._fitting:
            if (classifier := fitted()) is not None:  # fitted by a concurrent prompt while this one waited
                return classifier
            name = next((n for n in self.pending if _asks(question, task_format(n))), None)
            if name is None:
                return None
            self.classifiers.append(self.fit_on_demand(name))
            self.pending.remove(name)
            return self.classifiers[-1]

    def respond(self, request: dict) -> tuple[int, dict]:
        """The status and OpenAI-shaped body answering one chat completion request (400 for what it cannot answer)."""
        try:
            prompt = _user_prompt(request)
            structured = bool(request.get("response_format"))
            logprobs = None
            if request.get("logprobs"):
                top_logprobs = request.get("top_logprobs") or 0
                if not isinstance(top_logprobs, int):
                    raise TypeError(f"top_logprobs must be an integer, got {top_logprobs!r}")
                text, content = self.answer_with_logprobs(prompt, structured, top_logprobs)
                logprobs = {"content": content}
            else:
                text = self.answer(prompt, structured)
        except (ValueError, KeyError, StopIteration, TypeError) as exc:
            return 400, {"error": {"message": str(exc) or "expected a chat completion request with a user message"}}
        self.served += 1
        completion_tokens = len(logprobs["content"]) if logprobs else len(text.split())
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", MODEL_ID),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt.split()) + completion_tokens,
            },
        }

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["path"] in ("/health", "/v1/health"):
            return await respond_json(send, 200, {"status": "ok"})
        if scope["path"] == "/v1/models":
            return await respond_json(
                send, 200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": NAME}]}
            )
        if scope["path"] != "/v1/chat/completions":
            return await respond_json(send, 404, {"error": {"message": f"no route {scope['path']}"}})
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        status, payload = self.respond(request if isinstance(request, dict) else {})
        headers = [(b"x-request-id", payload["id"].encode())] if status == 200 else None
        await respond_json(send, status, payload, headers)


def _gold_data_dir(data_dir: Path | None) -> Path:
    data_dir = data_dir or resolve_data_dir()
    if data_dir is None:
        raise SystemExit(
            "the reference teacher needs the gold train splits: set OPENGROK_DATA_DIR to a folder laid out like "
            "shared/data"
        )
    return Path(data_dir)


def _user_prompt(request: dict) -> str:
    return next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")


def _asks(question: str, answer_format: TaskFormat) -> bool:
    """The question is this task's label question listing exactly its label words (so a differently mapped task is
    not answered)."""
    return question.startswith(answer_format.question) and _offers(question, answer_format.words)


def _token_entry(token: str, logprob: float, alternatives) -> dict:
    """One ``logprobs.content`` entry; an alternative ``(None, logprob)`` is the token itself."""
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode("utf-8")),
        "top_logprobs": [
            {"token": alt or token, "logprob": value, "bytes": list((alt or token).encode("utf-8"))}
            for alt, value in alternatives or ()
        ],
    }


def _offers(question: str, words: tuple[str, ...]) -> bool:
    """The prompt lists exactly this classifier's label words (so a differently mapped task is not answered)."""
    offered = question.rsplit(":", 1)[-1]
    return len(find_labels(offered, list(words))) == len(words)
