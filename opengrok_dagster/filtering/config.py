"""The filtering stage's one config object: every threshold of every automated check, validated up front."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from opengrok_dagster.settings import CONFIG_DIR


LABEL_ISSUE_ACTIONS = ("review", "reject", "off")
DEFAULT_BLOCKLIST = CONFIG_DIR / "blocklist.txt"
DEFAULT_IDENTITY_TERMS = CONFIG_DIR / "identity_terms.txt"

# Languages the detector tells apart by default: the allowed ones are always added. Loading only these
# (not all 75 lingua models) keeps detection fast while still recognising the common non-English posts.
DEFAULT_DETECTED_LANGUAGES = (
    "en",
    "es",
    "pt",
    "fr",
    "de",
    "it",
    "nl",
    "tr",
    "ru",
    "ja",
    "ko",
    "zh",
    "ar",
    "hi",
    "id",
    "el",
)


class FilterConfig(BaseModel):
    """Thresholds of the filter chain, the split fractions and the files the lexicon checks read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_chars: int = Field(
        default=20, description="Shorter responses (after PII scrubbing) are rejected as too_short."
    )
    max_chars: int = Field(default=4000, description="Longer responses are rejected as too_long.")
    min_words: int = Field(default=3, description="Responses with fewer words are rejected as too_short.")
    reject_truncated: bool = Field(
        default=False,  # off by default for the 128-token embedded teacher
        description="Reject responses cut off by max_tokens (finish_reason == 'length').",
    )
    blocklist_path: str = Field(
        default=str(DEFAULT_BLOCKLIST),
        description="Block list file: one term or phrase a line; a match rejects the response.",
    )
    identity_terms_path: str = Field(
        default=str(DEFAULT_IDENTITY_TERMS),
        description="Identity terms for the bias check (generalisations go to review).",
    )
    toxicity_classifier: str = Field(
        default="profanity_check",
        description="'profanity_check' (bundled model) or 'package.module:factory' for another classifier.",
    )
    toxicity_reject_threshold: float = Field(
        default=0.9, description="Toxicity at or above this rejects the response."
    )
    toxicity_review_threshold: float = Field(
        default=0.6, description="Toxicity at or above this (below the reject threshold) sends it to review."
    )
    bias_toxicity_threshold: float = Field(
        default=0.3, description="An identity term with toxicity at or above this sends it to review."
    )
    allowed_languages: tuple[str, ...] = Field(default=("en",), description="ISO 639-1 codes of the languages kept.")
    detected_languages: tuple[str, ...] = Field(
        default=DEFAULT_DETECTED_LANGUAGES,
        description="ISO 639-1 codes the detector tells apart (allowed ones are added).",
    )
    language_min_chars: int = Field(
        default=25,  # shorter texts are too short to tell languages apart reliably
        description="Texts with fewer letters (without mentions, hashtags, URLs) skip language detection.",
    )
    language_min_confidence: float = Field(
        default=0.6, description="Below this confidence the language counts as unknown and is not rejected."
    )
    near_duplicate_threshold: float = Field(
        default=0.8,
        description="Estimated Jaccard similarity of word 3-grams from which a later response is a near duplicate.",
    )
    minhash_permutations: int = Field(default=64, description="MinHash permutations: more is more precise and slower.")
    validation_fraction: float = Field(
        default=0.1, description="Share of each topic's trainable prompts used for validation."
    )
    heldout_fraction: float = Field(
        default=0.1, description="Share of prompts held out of training for the teacher-agreement evaluation."
    )
    annotation_heldout_fraction: float = Field(
        default=0.1,
        description="Share of the teacher's annotations of the user's posts held out of training: the student's "
        "agreement with the teacher on the user's own posts is measured on them (eval_report, post_labels).",
    )
    split_seed: int = Field(default=0, description="Seed of the prompt hash that decides the split.")
    label_issues: str = Field(
        default="review",
        description="Likely-wrong annotation labels found by confident learning (cleanlab): 'review' (to the review "
        "queue), 'reject', or 'off'.",
    )
    label_issue_min_rows: int = Field(
        default=200, description="Kept annotations of a task below which confident learning does not judge it."
    )

    def model_post_init(self, context) -> None:
        if not 0 < self.min_chars <= self.max_chars:
            raise ValueError(
                f"need 0 < min_chars <= max_chars, got min_chars={self.min_chars}, max_chars={self.max_chars}"
            )
        if self.min_words < 0:
            raise ValueError(f"min_words must be >= 0, got {self.min_words}")
        for name in (
            "toxicity_reject_threshold",
            "toxicity_review_threshold",
            "bias_toxicity_threshold",
            "language_min_confidence",
            "validation_fraction",
            "heldout_fraction",
            "annotation_heldout_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.toxicity_review_threshold > self.toxicity_reject_threshold:
            raise ValueError(
                f"toxicity_review_threshold ({self.toxicity_review_threshold}) must not exceed "
                f"toxicity_reject_threshold ({self.toxicity_reject_threshold})"
            )
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(f"near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}")
        if self.minhash_permutations < 16:
            raise ValueError(f"minhash_permutations must be >= 16, got {self.minhash_permutations}")
        if self.validation_fraction + self.heldout_fraction >= 1.0:
            raise ValueError("validation_fraction + heldout_fraction must leave room for a training split (sum < 1)")
        if self.validation_fraction + self.annotation_heldout_fraction >= 1.0:
            raise ValueError(
                "validation_fraction + annotation_heldout_fraction must leave room for a training split (sum < 1)"
            )
        if self.label_issue_min_rows < 10:
            raise ValueError(f"label_issue_min_rows must be >= 10, got {self.label_issue_min_rows}")
        if self.label_issues not in LABEL_ISSUE_ACTIONS:
            choices = ", ".join(LABEL_ISSUE_ACTIONS)
            raise ValueError(f"label_issues must be one of {choices}, got {self.label_issues!r}")
        if not self.allowed_languages:
            raise ValueError("allowed_languages must name at least one ISO 639-1 code, e.g. ['en']")
        for name in ("blocklist_path", "identity_terms_path"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(
                    f"{name} {getattr(self, name)!r} is not a readable file; point it at a word list (one term a line)"
                )
