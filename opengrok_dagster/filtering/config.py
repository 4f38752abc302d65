"""The filtering stage's one config object: every threshold of every automated check, validated up front."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opengrok_dagster.settings import REPO_ROOT

LABEL_ISSUE_ACTIONS = ("review", "reject", "off")
DEFAULT_BLOCKLIST = REPO_ROOT / "config" / "blocklist.txt"
DEFAULT_IDENTITY_TERMS = REPO_ROOT / "config" / "identity_terms.txt"

# Languages the detector tells apart by default: the allowed ones are always added. Loading only these
# (not all 75 lingua models) keeps detection fast while still recognising the common non-English posts.
DEFAULT_DETECTED_LANGUAGES = ("en", "es", "pt", "fr", "de", "it", "nl", "tr", "ru", "ja", "ko", "zh", "ar", "hi", "id", "el")


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the filter chain, the split fractions and the files the lexicon checks read."""

    min_chars: int = 20
    max_chars: int = 4000
    min_words: int = 3
    reject_truncated: bool = False  # finish_reason == "length"; off by default for the 128-token embedded teacher
    blocklist_path: str = str(DEFAULT_BLOCKLIST)
    identity_terms_path: str = str(DEFAULT_IDENTITY_TERMS)
    toxicity_classifier: str = "profanity_check"  # or "package.module:factory" returning a ToxicityClassifier
    toxicity_reject_threshold: float = 0.9
    toxicity_review_threshold: float = 0.6
    bias_toxicity_threshold: float = 0.3  # identity term + toxicity at or above this -> needs_review
    allowed_languages: tuple[str, ...] = ("en",)
    detected_languages: tuple[str, ...] = DEFAULT_DETECTED_LANGUAGES
    language_min_chars: int = 25  # shorter texts are too short to tell languages apart reliably
    language_min_confidence: float = 0.6
    near_duplicate_threshold: float = 0.8  # estimated Jaccard similarity of word 3-gram sets
    minhash_permutations: int = 64
    validation_fraction: float = 0.1
    heldout_fraction: float = 0.1
    split_seed: int = 0
    label_issues: str = "review"  # likely-wrong annotation labels (confident learning): review | reject | off
    label_issue_min_rows: int = 200  # kept annotations of a task below which confident learning does not judge it

    def __post_init__(self) -> None:
        if not 0 < self.min_chars <= self.max_chars:
            raise ValueError(f"need 0 < min_chars <= max_chars, got min_chars={self.min_chars}, max_chars={self.max_chars}")
        if self.min_words < 0:
            raise ValueError(f"min_words must be >= 0, got {self.min_words}")
        for name in ("toxicity_reject_threshold", "toxicity_review_threshold", "bias_toxicity_threshold",
                     "language_min_confidence", "validation_fraction", "heldout_fraction"):
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
        if self.label_issue_min_rows < 10:
            raise ValueError(f"label_issue_min_rows must be >= 10, got {self.label_issue_min_rows}")
        if self.label_issues not in LABEL_ISSUE_ACTIONS:
            choices = ", ".join(LABEL_ISSUE_ACTIONS)
            raise ValueError(f"label_issues must be one of {choices}, got {self.label_issues!r}")
        if not self.allowed_languages:
            raise ValueError("allowed_languages must name at least one ISO 639-1 code, e.g. ['en']")
        for name in ("blocklist_path", "identity_terms_path"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name} {getattr(self, name)!r} is not a readable file; point it at a word list (one term a line)")
