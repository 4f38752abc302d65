"""Build the mask table: one row per training/validation example, every list aligned to the student's tokens.

Each token takes the features of the spaCy word holding its first non-space character (character offsets
from the fast tokenizer); chat-template scaffolding and special tokens are never masked, nor is any token outside
the config's ``scope`` (``in_scope`` per token: the post, the prompt, or prompt and response).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from opengrok_dagster.masks.config import MaskConfig, MaskInputError
from opengrok_dagster.masks.linguistics import Words, key_relation_flags, parse_texts, spacy_model_version
from opengrok_dagster.masks.render import ChatRenderer, RenderedExample
from opengrok_dagster.masks.tfidf import TfidfScorer
from opengrok_dagster.masks.tokenizer import require_offsets, structural_special_ids, tokenizer_fingerprint
from opengrok_dagster.tasks.schemas import MASK_INPUT_COLUMNS


TRAINING_SPLITS = ("train", "validation")
TOKEN_LIST_COLUMNS = (
    "input_ids",
    "p",
    "m",
    "tfidf",
    "pos_score",
    "dep_score",
    "random",
    "pos_tag",
    "dep_rel",
    "word_index",
    "template_token",
    "in_scope",
    "char_start",
    "char_end",
)


@dataclass
class MaskTableResult:
    """The table plus what the asset reports: the fitted TF-IDF, dropped examples, words parsed, alignment quality."""

    table: pd.DataFrame
    tfidf: TfidfScorer
    dropped_example_ids: list[str] = field(default_factory=list)
    words: int = 0
    seconds: float = 0.0
    misaligned_tokens: int = 0
    content_tokens: int = 0


def select_training_examples(filtered: pd.DataFrame) -> pd.DataFrame:
    """Kept rows of the train and validation splits (held-out prompts never enter training)."""
    required = set(MASK_INPUT_COLUMNS) | {"state"}
    missing = sorted(required - set(filtered.columns))
    if missing:
        raise MaskInputError(
            f"filtered_responses lacks columns {missing}; re-materialise filtered_responses with the current filtering stage"
        )
    chosen = filtered[(filtered["state"] == "kept") & filtered["split"].isin(TRAINING_SPLITS)]
    if chosen.empty:
        raise MaskInputError(
            f"filtered_responses has no kept rows in the splits {list(TRAINING_SPLITS)} (of {len(filtered)} rows); "
            "collect more responses or loosen the filters before building mask tables"
        )
    return chosen.reset_index(drop=True)


def example_seed(seed: int, example_id: str) -> int:
    """A per-example seed: a rerun, or the same example in another table, draws the same numbers."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{example_id}".encode()).digest()[:8], "little")


def _require_text(examples: pd.DataFrame) -> None:
    for column in ("prompt", "response"):
        text = examples[column].fillna("").astype(str)
        empty = examples.loc[text.str.strip() == "", "example_id"].tolist()
        if empty:
            raise MaskInputError(
                f"{len(empty)} examples have an empty {column} (e.g. {empty[:5]}); the filtering stage must reject "
                "empty texts: re-materialise filtered_responses"
            )
    duplicated = examples.loc[examples["example_id"].duplicated(), "example_id"].tolist()
    if duplicated:
        raise MaskInputError(
            f"example_id values repeat ({duplicated[:5]}); filtered_responses must have unique example ids"
        )


def _next_true(flags: np.ndarray, positions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """For each start, the first index at or after it where ``flags`` holds (len(flags) - 1 if none)."""
    following = np.minimum.accumulate(np.where(flags, positions, len(flags) - 1)[::-1])[::-1]
    return following[np.minimum(starts, len(flags) - 1)]


@dataclass(frozen=True)
class _TextFeatures:
    """One distinct message text's words, scored once however many examples share it (the system prompt)."""

    words: Words
    char_word: np.ndarray  # per character: index of the word holding it, or -1
    solid: np.ndarray  # per character: a non-space character of some word
    tfidf: np.ndarray
    pos_score: np.ndarray
    dep_score: np.ndarray

    @classmethod
    def of(
        cls, text: str, words: Words, tfidf: TfidfScorer, pos_tags: frozenset[str], relations: frozenset[str]
    ) -> _TextFeatures:
        char_word = np.full(len(text), -1, dtype=np.int64)
        solid = np.zeros(len(text), dtype=bool)
        lengths = words.end - words.start
        offset_in_word = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        chars = np.repeat(words.start, lengths) + offset_in_word
        char_word[chars] = np.repeat(np.arange(len(words)), lengths)
        solid[chars] = np.repeat(~words.space, lengths)  # spaCy splits on whitespace: only SPACE tokens hold any
        return cls(
            words,
            char_word,
            solid,
            tfidf.score(words.term),
            np.fromiter((p in pos_tags for p in words.pos), dtype=np.int8, count=len(words)),
            key_relation_flags(words, relations).astype(np.int8),
        )


@dataclass(frozen=True)
class _ExampleText:
    """A rendered example's characters mapped to the words of its messages (system prompt, prompt, response).

    Per-character arrays have one entry past the end; per-word arrays end in a "no word" entry, so word index -1
    picks it.
    """

    char_word: np.ndarray  # per character: index of the word holding it, or -1
    solid: np.ndarray  # per character: a non-space character of some word
    content: np.ndarray  # per character (no sentinel): inside a message rather than chat-template scaffolding
    word_text: list[str]
    pos_tag: np.ndarray
    dep_rel: np.ndarray
    tfidf: np.ndarray
    pos_score: np.ndarray
    dep_score: np.ndarray

    @classmethod
    def join(cls, rendered: RenderedExample, features: dict[str, _TextFeatures]) -> _ExampleText:
        length = len(rendered.text)
        char_word = np.full(length + 1, -1, dtype=np.int64)
        solid = np.zeros(length + 1, dtype=bool)
        content = np.zeros(length, dtype=bool)
        segments = [features[rendered.contents[name]] for name in rendered.spans]
        first = 0
        for segment, (start, end) in zip(segments, rendered.spans.values()):
            content[start:end] = True
            char_word[start:end] = np.where(segment.char_word >= 0, segment.char_word + first, -1)
            solid[start:end] = segment.solid
            first += len(segment.words)
        return cls(
            char_word,
            solid,
            content,
            [w for segment in segments for w in segment.words.text],
            np.array([p for segment in segments for p in segment.words.pos] + [""], dtype=object),
            np.array([d for segment in segments for d in segment.words.dep] + [""], dtype=object),
            np.concatenate([*(segment.tfidf for segment in segments), [0.0]]).astype(np.float32),
            np.concatenate([*(segment.pos_score for segment in segments), [0]]).astype(np.int8),
            np.concatenate([*(segment.dep_score for segment in segments), [0]]).astype(np.int8),
        )


@dataclass(frozen=True)
class _Alignment:
    word_index: np.ndarray  # per token: its word, or -1 for template tokens and tokens holding no word
    template: np.ndarray  # per token: chat-template scaffolding or a special token, never masked
    content_tokens: int
    misaligned: int  # content tokens whose characters span several words


class _Aligner:
    """Maps one rendered example's tokens to its words and scores them."""

    def __init__(self, config: MaskConfig, special_ids: set[int], vocabulary_size: int):
        self.config = config
        self.is_special = np.zeros(
            max(vocabulary_size, *special_ids, 0) + 1, dtype=bool
        )  # a lookup beats np.isin per example
        self.is_special[list(special_ids)] = True

    def example(
        self,
        example_id: str,
        split: str,
        rendered: RenderedExample,
        features: dict[str, _TextFeatures],
        input_ids: list[int],
        offsets: list[tuple[int, int]],
        post_text: str | None = None,
    ) -> tuple[dict | None, int, int]:
        """The example's table row (None when its prompt fills max_length), its misaligned and content tokens."""
        ids = np.asarray(input_ids[: self.config.max_length], dtype=np.int32)
        spans = np.asarray(offsets[: self.config.max_length], dtype=np.int64).reshape(-1, 2)
        starts, ends = spans[:, 0], spans[:, 1]
        response_start = int(np.searchsorted(ends, rendered.spans["response"][0], side="right"))
        if response_start >= len(ids):
            return None, 0, 0
        text = _ExampleText.join(rendered, features)
        alignment = self._align(text, ids, starts, ends)
        word_index, template = alignment.word_index, alignment.template
        scope = self._scope(rendered, template, starts, response_start, post_text)
        p, keep, random = self._sample(example_id, text, alignment, scope)
        return (
            {
                "example_id": example_id,
                "split": split,
                "input_ids": ids,
                "response_start": response_start,
                "p": p,
                "m": keep.astype(np.int8),
                "tfidf": text.tfidf[word_index],
                "pos_score": text.pos_score[word_index],
                "dep_score": text.dep_score[word_index],
                "random": random,
                "pos_tag": text.pos_tag[word_index],
                "dep_rel": text.dep_rel[word_index],
                "word_index": word_index.astype(np.int32),
                "template_token": template.astype(np.int8),
                "in_scope": scope.astype(np.int8),
                "char_start": starts.astype(np.int32),
                "char_end": ends.astype(np.int32),
                "text": rendered.text,
                "words": text.word_text,
            },
            alignment.misaligned,
            alignment.content_tokens,
        )

    def _align(self, text: _ExampleText, ids: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> _Alignment:
        """A token takes the word of its first non-space character; a whitespace-only token, its whitespace word."""
        length = len(text.content)
        positions = np.arange(length + 1)
        first_solid = _next_true(text.solid, positions, starts)
        first_any = _next_true(text.char_word >= 0, positions, starts)
        first_char = np.where(first_solid < ends, first_solid, first_any)
        aligned = (first_char < ends) & (ends > starts)
        word_index = np.where(aligned, text.char_word[np.minimum(first_char, length)], -1)
        content_sum = np.concatenate([[0], np.cumsum(text.content)])
        is_content = content_sum[np.minimum(ends, length)] - content_sum[np.minimum(starts, length)] > 0
        template = ~is_content | self.is_special[ids]
        word_index[template] = -1
        last_solid = np.maximum.accumulate(np.where(text.solid, positions, -1))[np.clip(ends - 1, 0, length)]
        spans_words = (last_solid >= starts) & (text.char_word[np.maximum(last_solid, 0)] != word_index)
        misaligned = int((~template & aligned & spans_words).sum())
        return _Alignment(word_index, template, int(is_content.sum()), misaligned)

    def _scope(
        self,
        rendered: RenderedExample,
        template: np.ndarray,
        starts: np.ndarray,
        response_start: int,
        post: str | None,
    ) -> np.ndarray:
        """Per token: may the mask hide it (never a template token; the response only in 'prompt_response')."""
        scope = ~template
        if self.config.scope == "prompt_response":
            return scope
        scope &= np.arange(len(template)) < response_start
        if self.config.scope == "prompt":
            return scope
        prompt_start, prompt_end = rendered.spans["prompt"]
        found = rendered.text.find(post, prompt_start, prompt_end) if post else -1
        if found < 0:
            return np.zeros_like(scope)  # no post located in the prompt: nothing of this example is masked
        return scope & (starts >= found) & (starts < found + len(post))

    def _sample(
        self, example_id: str, text: _ExampleText, alignment: _Alignment, scope: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """p from the token's word scores and seeded noise, then m: sampled (or thresholded), plus random masking,
        or the lowest-p ``strength`` share of the scope; the random control masks as many scope tokens at random.
        Tokens outside the scope always have p = m = 1. Returns (p, m as bool, the noise)."""
        config, word_index = self.config, alignment.word_index
        template = ~scope
        rng = np.random.default_rng(example_seed(config.seed, example_id))
        random = rng.random(len(word_index), dtype=np.float32)
        logits = (
            config.alpha * text.tfidf[word_index]
            + config.beta * text.pos_score[word_index]
            + config.gamma * text.dep_score[word_index]
            + config.delta * random
        )
        p = np.where(template, 1.0, 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        if config.sampling == "bernoulli":
            keep = rng.random(len(word_index)) < p
        else:
            keep = p >= config.threshold
        content_positions = np.flatnonzero(~template)
        if config.strength > 0:
            keep = np.ones(len(word_index), dtype=bool)
            lowest = content_positions[np.argsort(p[content_positions], kind="stable")]
            keep[lowest[: int(round(config.strength * len(content_positions)))]] = False
        else:
            dropped = rng.choice(
                content_positions, size=int(round(config.random_mask_rate * len(content_positions))), replace=False
            )
            keep[dropped] = False
        keep[template] = True
        if config.selection == "random":  # the control: the same count in the scope, placed at random
            masked = int((~keep).sum())
            keep = np.ones(len(word_index), dtype=bool)
            keep[rng.choice(content_positions, size=masked, replace=False)] = False
            p[content_positions] = rng.permutation(p[content_positions])
        return p, keep, random


def build_mask_table(
    examples: pd.DataFrame,
    tokenizer,
    nlp,
    config: MaskConfig,
    tfidf: TfidfScorer | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> MaskTableResult:
    """The mask table of ``examples`` (columns MASK_INPUT_COLUMNS); ``tfidf`` rebuilds with a saved vocabulary.

    Examples whose prompt fills ``max_length`` leave no response token to learn from and are dropped (reported).
    """
    began = time.perf_counter()
    _require_text(examples)
    require_offsets(tokenizer)
    renderer = ChatRenderer(tokenizer)
    columns = list(MASK_INPUT_COLUMNS) + (["post_text"] if "post_text" in examples.columns else [])
    rows = examples[columns].to_dict("records")
    rendered = [
        renderer.render(
            None if pd.isna(r["system_prompt"]) else str(r["system_prompt"]), str(r["prompt"]), str(r["response"])
        )
        for r in rows
    ]
    segment_texts = [text for r in rendered for text in r.contents.values()]
    words = parse_texts(nlp, segment_texts, config.spacy_batch_size, config.spacy_n_process)
    progress(f"parsed {len(words)} distinct texts from {len(rows)} examples with spaCy")
    if tfidf is None:
        tfidf = _fit_tfidf([r for r, row in zip(rendered, rows) if row["split"] == "train"], words)
    built, dropped, misaligned, content = _align_examples(rows, rendered, words, tokenizer, tfidf, config)
    _require_alignment(len(built), misaligned, content, config)
    table = pd.DataFrame(built)
    table["class_label"] = _class_labels(examples, table["example_id"])
    table["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    table["spacy_model"] = config.spacy_model
    table["spacy_model_version"] = spacy_model_version(nlp)
    table["max_length"] = config.max_length
    table["mask_config"] = json.dumps({**config.model_dump(), "tfidf_sha": tfidf.sha}, sort_keys=True)
    word_count = sum(len(words[text]) for text in dict.fromkeys(segment_texts))
    return MaskTableResult(table, tfidf, dropped, word_count, time.perf_counter() - began, misaligned, content)


def _class_labels(examples: pd.DataFrame, example_ids: pd.Series) -> pd.Series:
    """Each example's annotation class (filtered_responses' class_label; None for generated responses), carried
    so that training can balance classes without reading the filtered set again."""
    labels = examples.set_index("example_id")["class_label"] if "class_label" in examples else pd.Series(dtype=str)
    return example_ids.map(labels).astype(pd.StringDtype())


def _fit_tfidf(training: list[RenderedExample], words: dict[str, Words]) -> TfidfScorer:
    """IDF over the train examples' prompts and responses (never validation: it would leak into the scores)."""
    if not training:
        raise MaskInputError(
            "no train examples to fit TF-IDF on (only validation); the filtering stage must assign a train split"
        )
    return TfidfScorer.fit(
        [
            [t for t in words[r.contents[name]].term if t is not None]
            for r in training
            for name in ("prompt", "response")
        ]
    )


def _align_examples(
    rows: list[dict],
    rendered: list[RenderedExample],
    words: dict[str, Words],
    tokenizer,
    tfidf: TfidfScorer,
    config: MaskConfig,
) -> tuple[list[dict], list[str], int, int]:
    """Every example's row (and the ids of those dropped), with the misaligned and content tokens summed."""
    encoded = tokenizer([r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True)
    pos_tags, relations = frozenset(config.pos_tags), frozenset(config.dep_relations)
    features = {
        text: _TextFeatures.of(text, text_words, tfidf, pos_tags, relations) for text, text_words in words.items()
    }
    aligner = _Aligner(config, structural_special_ids(tokenizer), len(tokenizer))
    built, dropped, misaligned, content = [], [], 0, 0
    for row, example, ids, offsets in zip(rows, rendered, encoded["input_ids"], encoded["offset_mapping"]):
        post = row.get("post_text")
        record, example_misaligned, example_content = aligner.example(
            str(row["example_id"]),
            row["split"],
            example,
            features,
            ids,
            offsets,
            post if isinstance(post, str) else None,
        )
        if record is None:
            dropped.append(str(row["example_id"]))
            continue
        built.append(record)
        misaligned += example_misaligned
        content += example_content
    return built, dropped, misaligned, content


def _require_alignment(built: int, misaligned: int, content: int, config: MaskConfig) -> None:
    if not built:
        raise MaskInputError(
            f"every example's prompt fills max_length={config.max_length} tokens, leaving no response to learn from; "
            "raise max_length"
        )
    if content and misaligned / content > config.max_unaligned_rate:
        raise MaskInputError(
            f"{misaligned} of {content} content tokens span several spaCy words ({misaligned / content:.1%} > "
            f"max_unaligned_rate={config.max_unaligned_rate}): the tokenizer and spaCy split this text very differently, "
            "so word scores would be smeared; check that the student's tokenizer reports character offsets into the rendered "
            "text (a normaliser that rewrites text breaks them) or raise max_unaligned_rate"
        )
