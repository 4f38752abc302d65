"""Rule-based checks, one small function or class each: errors and truncation, length, refusals and
deflections, the block list and identity-term generalisations (the bias check)."""

from __future__ import annotations

import re
from pathlib import Path

from opengrok_dagster.tasks.reasons import (
    DEFLECTION,
    EMPTY,
    IDENTITY_GENERALISATION,
    IDENTITY_TOXIC,
    OVERLONG,
    REFUSAL,
    TEACHER_ERROR,
    TOO_LONG,
    TOO_SHORT,
    TRUNCATED,
)


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def error_reasons(error: object, finish_reason: object, reject_truncated: bool) -> list[str]:
    """A final teacher error, or a cut-off answer when truncation is configured to count."""
    if isinstance(error, str) and error:
        return [TEACHER_ERROR]
    if reject_truncated and finish_reason == "length":
        return [TRUNCATED]
    return []


# The client's anomaly codes (opengrok_dagster.collect.client) that mean the teacher declined to answer.
_REFUSED_ANOMALIES = ("content_filter", "refusal", "null_content", "no_choices")


def anomaly_reasons(anomaly: object) -> tuple[list[str], list[str]]:
    """(rejections, review flags) for the client's record of an odd answer: a provider refusal, content filter,
    null content or empty choices is a refusal; an answer far past max_tokens goes to review."""
    if anomaly in _REFUSED_ANOMALIES:
        return [REFUSAL], []
    if anomaly == "overlong":
        return [], [OVERLONG]
    return [], []


def length_reasons(text: str, min_chars: int, max_chars: int, min_words: int) -> list[str]:
    stripped = text.strip()
    if not stripped:
        return [EMPTY]
    if len(stripped) < min_chars or len(stripped.split()) < min_words:
        return [TOO_SHORT]
    if len(stripped) > max_chars:
        return [TOO_LONG]
    return []


# Refusals decline the task; deflections answer around it (no real-time access, "I'm just an AI").
# Anchored to the first sentences: a post that quotes "I can't help" later on is not a refusal.
_REFUSAL_PATTERNS = [
    r"\bas an? (?:ai|a\.i\.|artificial intelligence)(?: language)?(?: model| assistant)?\b",
    r"\bas a (?:large )?language model\b",
    r"\bi(?:'m| am) (?:sorry|afraid),? but i (?:can(?:'t|not)|won't|will not|am unable|'m unable|must decline)",
    r"\bi (?:can(?:'t|not)|won't|will not|am unable to|'m unable to|am not able to|'m not able to) "
    r"(?:help|assist|comply|fulfil+|provide|create|generate|write|do|produce|engage)\b",
    r"\bi (?:must|have to|need to) (?:decline|refuse)\b",
    r"\b(?:this|that) (?:request )?(?:goes|is|would be) against my (?:guidelines|programming|policies|principles)\b",
    r"\bi(?:'m| am) not (?:comfortable|going to) (?:writing|creating|generating|write|create|generate|help)",
    r"\bi don't feel comfortable\b",
]
_DEFLECTION_PATTERNS = [
    r"\bi (?:don't|do not) have (?:access to )?(?:real[- ]time|live|current|up-to-date|browsing)",
    r"\bi (?:don't|do not|can't|cannot) (?:browse|access) (?:the internet|social media|twitter|x|reddit|the web)\b",
    r"\bmy (?:knowledge|training data) (?:cutoff|cut-off|only goes|is limited)",
    r"\bi(?:'m| am) (?:just|only) an? (?:ai|bot|language model|assistant)\b",
    r"\bi (?:don't|do not) have (?:personal )?(?:opinions|feelings|beliefs)\b",
]
_REFUSAL = re.compile("|".join(_REFUSAL_PATTERNS), re.IGNORECASE)
_DEFLECTION = re.compile("|".join(_DEFLECTION_PATTERNS), re.IGNORECASE)
_OPENING_CHARS = 300


def refusal_reasons(text: str) -> list[str]:
    """`refusal` or `deflection` when the opening of the answer declines or sidesteps the task."""
    opening = text[:_OPENING_CHARS].translate(_APOSTROPHES)
    if _REFUSAL.search(opening):
        return [REFUSAL]
    if _DEFLECTION.search(opening):
        return [DEFLECTION]
    return []


def read_term_list(path: str | Path, what: str) -> list[str]:
    """One term or phrase a line; blank lines and `#` comments ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"cannot read the {what} {path}: {exc}; fix the file or point the config at another one"
        ) from None
    terms = [line.split("#", 1)[0].strip().lower() for line in lines]
    terms = [term for term in terms if term]
    if not terms:
        raise ValueError(f"the {what} {path} has no terms; add one term a line")
    return terms


# Leetspeak digits and symbols read as the letters they stand for, inside words only.
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "l"}
)
# A token with at least one letter and one leet character, ending in a word character (so "fuck!" keeps
# its "!" as punctuation): plain words and numbers are left alone.
_LEET_TOKEN = re.compile(r"(?<![\w@$!|])(?=[\w@$!|]*[a-z])(?=[\w@$!|]*[0-9@$!|])[\w@$!|]*\w")


def _deleet(text: str) -> str:
    return _LEET_TOKEN.sub(lambda match: match.group(0).translate(_LEET), text.lower())


def _term_pattern(term: str) -> str:
    """Each letter may repeat ("fuuuck") and be split by one of . - _ * ("f.u.c.k"); words by any space."""
    words = []
    for word in term.split():
        words.append(r"[.\-_*]?".join(f"{re.escape(char)}+" for char in word))
    return r"\s+".join(words)


class Blocklist:
    """Whole-word, leetspeak-aware matching of the configured block list."""

    def __init__(self, terms: list[str]) -> None:
        self.terms = terms
        # Longest first, so a phrase wins over a word it contains.
        alternation = "|".join(_term_pattern(term) for term in sorted(set(terms), key=len, reverse=True))
        self._pattern = re.compile(rf"(?<![a-z0-9])(?:{alternation})(?![a-z0-9])")

    @classmethod
    def from_file(cls, path: str | Path) -> Blocklist:
        return cls(read_term_list(path, "block list"))

    def matches(self, text: str) -> list[str]:
        return [match.group(0) for match in self._pattern.finditer(_deleet(text))]


# A generalisation: a quantifier or demonstrative before an identity group, or the group followed by a
# sweeping verb ("women always ...", "all immigrants are ...").
_QUANTIFIERS = r"(?:all|every|most|typical|those|these|such|you)"
_SWEEPING = r"(?:are|is|always|never|can't|cannot|don't|should|ruin|ruined|destroy|destroyed|deserve)"


class IdentityTerms:
    """Identity terms (groups of people) for the bias check: mentions alone are fine, generalisations are flagged."""

    def __init__(self, terms: list[str]) -> None:
        self.terms = terms
        group = "|".join(re.escape(term) for term in sorted(set(terms), key=len, reverse=True))
        self._mention = re.compile(rf"\b(?:{group})\b", re.IGNORECASE)
        self._generalisation = re.compile(
            rf"\b{_QUANTIFIERS}\s+(?:\w+\s+)?(?:{group})\b|\b(?:{group})\s+{_SWEEPING}\b", re.IGNORECASE
        )

    @classmethod
    def from_file(cls, path: str | Path) -> IdentityTerms:
        return cls(read_term_list(path, "identity term list"))

    def mentions(self, text: str) -> bool:
        return self._mention.search(text) is not None

    def generalises(self, text: str) -> bool:
        return self._generalisation.search(text) is not None


def bias_reasons(text: str, toxicity: float, identity: IdentityTerms, toxicity_threshold: float) -> list[str]:
    """Identity terms with generalising or toxic language go to review rather than being dropped."""
    if not identity.mentions(text):
        return []
    if identity.generalises(text):
        return [IDENTITY_GENERALISATION]
    if toxicity >= toxicity_threshold:
        return [IDENTITY_TOXIC]
    return []
