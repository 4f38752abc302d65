"""Language identification with lingua, whose models ship inside the wheel.

Only the configured languages are loaded: lingua's cost grows with the number of candidate languages,
and the allowed set plus the common languages of social media is what the filter needs to tell apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from lingua import IsoCode639_1, Language, LanguageDetectorBuilder


# Mentions, placeholders, URLs, hashtags and digits carry no language and mislead detection on short posts.
_NOT_LANGUAGE = re.compile(r"@\w+|\[(?:email|phone)\]|\bhttps?\S*|#\w+|\d+")


def language_text(text: str) -> str:
    """The words of ``text`` that tell its language: mentions, hashtags, URLs and numbers removed."""
    return " ".join(_NOT_LANGUAGE.sub(" ", text).split())


def parse_language_codes(codes: Sequence[str], setting: str) -> list[Language]:
    languages = []
    for code in codes:
        try:
            languages.append(Language.from_iso_code_639_1(IsoCode639_1.from_str(code.strip().lower())))
        except ValueError:
            raise ValueError(f"{setting}: unknown language code {code!r}; use ISO 639-1 codes such as 'en', 'es', 'ja'") from None
    return languages


@lru_cache(maxsize=4)
def _lingua_detector(candidates: frozenset[Language]):
    """Preloading the models takes seconds; runs in one process (tests, `dagster dev`) share the detector."""
    return LanguageDetectorBuilder.from_languages(*candidates).with_preloaded_language_models().build()


class LanguageDetector:
    """Detects among ``detected`` languages (the allowed ones always included); returns ISO 639-1 codes."""

    def __init__(self, allowed: Sequence[str], detected: Sequence[str], min_confidence: float) -> None:
        allowed_languages = parse_language_codes(allowed, "allowed_languages")
        candidates = set(allowed_languages) | set(parse_language_codes(detected, "detected_languages"))
        if len(candidates) < 2:
            raise ValueError("language detection needs at least two candidate languages: add to detected_languages")
        self.allowed = {language.iso_code_639_1.name.lower() for language in allowed_languages}
        self.min_confidence = min_confidence
        self._detector = _lingua_detector(frozenset(candidates))

    def detect(self, texts: Sequence[str]) -> list[tuple[str | None, float]]:
        """(code, confidence) of the most likely language per text; code None below min_confidence."""
        results = []
        for values in self._detector.compute_language_confidence_values_in_parallel(list(texts)):
            best = values[0] if values else None
            if best is None or best.value < self.min_confidence:
                results.append((None, best.value if best else 0.0))
            else:
                results.append((best.language.iso_code_639_1.name.lower(), best.value))
        return results
