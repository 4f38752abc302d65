"""Labelling the user's posts with the promoted student, in chunks that a killed run does not label again.

Each classification task is scored as the evaluation scores it (``LocalStudent.label_logprobs``: the shared
prompt prefix run once, posts in length-sorted batches), calibrated against content-free posts or raw, as chosen
for the promoted adapter on the evaluation's tuning posts (``evaluation.scoring_choice``), so a post gets
a label in the report's answer format and a probability per class. A chunk's labels are published to the work
directory as soon as it is done, under a key of the model, the settings and the chunk's posts (ids and text
hashes): a rerun reads the finished chunks back and labels only the rest, and a changed post or another model
makes its chunk's key differ, so nothing stale is reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from opengrok_dagster.evaluation.calibration import calibrate, content_free_messages, normalise
from opengrok_dagster.evaluation.local import DEFAULT_BATCH_TOKENS, LocalStudent
from opengrok_dagster.evaluation.scoring import CALIBRATED, GENERATED, RAW
from opengrok_dagster.publish import publishing
from opengrok_dagster.tasks.formats import Annotation, TaskFormat, task_format


class LabellingConfig(BaseModel):
    tasks: tuple[str, ...] = Field(
        default=("tweeteval_sentiment",),
        description="Tasks the student labels each post for: tweeteval_sentiment, tweet_topic (scored, with class "
        "probabilities) and wnut17, btc (entities, generated: much slower on a CPU).",
    )
    sample: int = Field(
        default=50,
        description="Posts labelled per shard, drawn with `seed` (0 = the whole shard): the default run labels a "
        "sample so that a 25k-post shard does not hold it up; the gpu profile labels every post.",
    )
    seed: int = Field(default=0, description="Seed of the sample.")
    chunk_posts: int = Field(
        default=256, description="Posts per chunk: each finished chunk is kept, so a killed run resumes after it."
    )
    calibrate: bool | None = Field(
        default=None,
        description="Calibrate label scores against content-free posts (probabilities too); unset = the scoring "
        "promoted_student names: the one chosen for the promoted adapter on the evaluation's tuning posts "
        "(calibrated where the report made no choice).",
    )
    topic_threshold: float = Field(
        default=0.3, description="Probability above which a topic is given besides the most likely one."
    )
    ner_max_new_tokens: int = Field(default=64, description="Tokens the student generates per post for entities.")
    device: str = Field(default="auto", description="Where the student runs: 'auto', 'cuda', 'mps' or 'cpu'.")
    precision: str = Field(default="auto", description="The student's weights: 'auto', 'bf16', 'fp16' or 'fp32'.")
    batch_tokens: int = Field(default=DEFAULT_BATCH_TOKENS, description="Tokens per forward pass of the student.")
    torch_threads: int = Field(default=0, description="CPU threads (0 = torch's default).")

    def scoring(self, kind: str) -> str:
        """The evaluation's scoring that gives the labels this config gives a task of ``kind``."""
        return GENERATED if kind == "ner" else RAW if self.calibrate is False else CALIBRATED

    def following(self, scoring: str | None) -> LabellingConfig:
        """This config with ``calibrate`` set from a label scoring chosen elsewhere (the promoted adapter's), unless
        it was set by hand; a generated scoring (NER) or none leaves classification calibrated."""
        if self.calibrate is not None:
            return self
        return self.model_copy(update={"calibrate": scoring != RAW})

    def model_post_init(self, context) -> None:
        if not self.tasks:
            raise ValueError("tasks is empty: name at least one task, e.g. tweeteval_sentiment")
        for name in self.tasks:
            task_format(name)  # an unknown task names the known ones
        for name in ("sample", "torch_threads", "ner_max_new_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.chunk_posts < 1 or self.batch_tokens < 1:
            raise ValueError("chunk_posts and batch_tokens must be >= 1")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def probabilities_column(task: str) -> str:
    return f"{task}_probabilities"


def sample_posts(posts: pd.DataFrame, config: LabellingConfig) -> pd.DataFrame:
    """The posts to label: ``sample`` of them drawn with ``seed`` (all when 0 or fewer), in the shard's order."""
    if config.sample == 0 or len(posts) <= config.sample:
        return posts.reset_index(drop=True)
    chosen = np.sort(np.random.default_rng(config.seed).choice(len(posts), config.sample, replace=False))
    return posts.iloc[chosen].reset_index(drop=True)


@dataclass
class LabellingOutcome:
    frame: pd.DataFrame
    chunks_reused: int
    chunks_labelled: int
    posts_labelled: int  # by this run (reused chunks excluded)
    seconds: float  # scoring time of this run
    distribution: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def posts_per_second(self) -> float | None:
        return round(self.posts_labelled / self.seconds, 2) if self.seconds > 0 else None


class PostLabeller:
    """Labels posts for the configured tasks with a scorer (``LocalStudent`` with the promoted adapter active)."""

    def __init__(self, scorer: LocalStudent, config: LabellingConfig, model_digest: str) -> None:
        self.scorer, self.config, self.model_digest = scorer, config, model_digest
        self.formats: list[TaskFormat] = [task_format(name) for name in config.tasks]
        self._priors: dict[str, np.ndarray] = {}

    @property
    def settings_key(self) -> str:
        """What a chunk's labels depend on besides its posts: the model and the scoring settings."""
        settings = self.config.model_dump(include={"tasks", "calibrate", "topic_threshold", "ner_max_new_tokens"})
        return json.dumps([self.model_digest, settings], sort_keys=True, default=list)

    def chunk_key(self, chunk: pd.DataFrame) -> str:
        digest = hashlib.sha256(self.settings_key.encode())
        for post_id, hashed in zip(chunk["post_id"], chunk["text_hash"]):
            digest.update(f"{post_id}\0{hashed}\0".encode())
        return digest.hexdigest()[:16]

    def _log_scores(self, task: TaskFormat, texts: list[str]) -> np.ndarray:
        words = list(task.words)
        scores = self.scorer.label_logprobs([task.messages(t) for t in texts], words)
        if self.config.scoring(task.kind) == RAW:
            return normalise(scores)
        if task.name not in self._priors:  # the content-free prior, once per task and run
            self._priors[task.name] = self.scorer.label_logprobs(content_free_messages(task.messages), words)
        return calibrate(scores, self._priors[task.name])

    def annotate(self, task: TaskFormat, texts: list[str]) -> tuple[list[Annotation], np.ndarray | None]:
        """Each post's labels for ``task`` and, for scored tasks, its probability per class (None for entities).

        Classes: the most likely one (topics: and every topic at ``topic_threshold`` or above). Entities: generated
        greedily as the evaluation does, ``reason`` set where the answer cannot be read (spans not in the post,
        unknown types)."""
        if task.kind == "ner":
            answers = self.scorer.generate([task.messages(t) for t in texts], self.config.ner_max_new_tokens)
            return [task.parse(answer, " ".join(text.split())) for answer, text in zip(answers, texts)], None
        probabilities = np.exp(self._log_scores(task, texts))
        annotations = []
        for row in probabilities:
            chosen = {int(row.argmax())}
            if task.kind == "multilabel":
                chosen |= {int(i) for i in np.flatnonzero(row >= self.config.topic_threshold)}
            annotations.append(Annotation(labels=tuple(sorted(chosen))))
        return annotations, probabilities

    def label(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """One chunk's labels: post id, text hash, model digest, and per task its label in the report's answer format
        (null where unreadable) and, for scored tasks, its probabilities."""
        texts = chunk["text"].astype(str).tolist()
        frame = pd.DataFrame({"post_id": chunk["post_id"].astype(str).tolist(), "text_hash": chunk["text_hash"]})
        for task in self.formats:
            annotations, probabilities = self.annotate(task, texts)
            frame[task.name] = [None if found.reason else task.answer(found) for found in annotations]
            if probabilities is not None:
                frame[probabilities_column(task.name)] = [np.round(row, 6).tolist() for row in probabilities]
        frame["model_digest"] = self.model_digest
        return frame


def label_distribution(labels: pd.Series, kind: str) -> dict[str, int]:
    """Posts per label (per topic for topics, per entity type for entities); ``unreadable`` counts null answers."""
    counts: Counter = Counter()
    for label in labels:
        if not isinstance(label, str):  # null (None, or NaN where a chunk's column held nulls only)
            counts["unreadable"] += 1
        elif kind == "multilabel":
            counts.update(label.split(", "))
        elif kind == "ner":
            counts.update(line.split(":", 1)[0] for line in label.splitlines())
        else:
            counts[label] += 1
    return dict(counts)


def label_posts(
    posts: pd.DataFrame,
    labeller: PostLabeller,
    work_dir: Path,
    log: Callable[[str], None] = lambda message: None,
    after_chunk: Callable[[int], None] = lambda index: None,
) -> LabellingOutcome:
    """Label ``posts`` chunk by chunk, publishing each chunk to ``work_dir`` and reusing those already there.

    ``after_chunk(index)`` runs after each chunk (reused or labelled), e.g. to stop when the posts changed;
    chunks of another model, settings or posts are removed. The result is read back from the chunk files, so a
    resumed run returns exactly what an uninterrupted one does.
    """
    posts = posts.assign(text_hash=[text_hash(str(t)) for t in posts["text"]])
    size = labeller.config.chunk_posts
    chunks = [posts.iloc[start : start + size] for start in range(0, len(posts), size)]
    paths = [work_dir / f"chunk-{i:05d}-{labeller.chunk_key(c)}.parquet" for i, c in enumerate(chunks)]
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in set(work_dir.glob("chunk-*.parquet")) - set(paths):
        stale.unlink()
    reused = labelled = labelled_posts = 0
    seconds = 0.0
    for index, (chunk, path) in enumerate(zip(chunks, paths)):
        if path.is_file():
            reused += 1
        else:
            started = time.monotonic()
            frame = labeller.label(chunk)
            seconds += time.monotonic() - started
            with publishing(path) as [partial]:
                frame.to_parquet(partial, index=False)
            labelled += 1
            labelled_posts += len(chunk)
            log(f"chunk {index + 1}/{len(chunks)}: {len(chunk)} posts labelled")
        after_chunk(index)
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True) if paths else pd.DataFrame()
    return LabellingOutcome(
        frame=frame,
        chunks_reused=reused,
        chunks_labelled=labelled,
        posts_labelled=labelled_posts,
        seconds=seconds,
        distribution={
            t: label_distribution(frame[t], task_format(t).kind) for t in labeller.config.tasks if t in frame
        },
    )
