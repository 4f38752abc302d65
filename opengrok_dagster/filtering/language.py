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
            raise ValueError(
                f"{setting}: unknown language code {code!r}; use ISO 639-1 codes such as 'en', 'es', 'ja'"
            ) from None
    return languages


@lru_cache(maxsize=8)
def _lingua_detector(candidates: frozenset[Language], low_accuracy: bool):
    """Preloading the models takes seconds; runs in one process (tests, `dagster dev`) share the detector."""
    builder = LanguageDetectorBuilder.from_languages(*candidates).with_preloaded_language_models()
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


class LanguageDetector:
    """Detects among ``detected`` languages (the allowed ones always included); returns ISO 639-1 codes.

    Two passes: lingua's low-accuracy mode (trigrams only, ~5x faster) settles the texts it confidently
    finds in an allowed language, the common case; every other text, the ones that may be rejected,
    is decided by the high-accuracy mode, so a rejection never rests on the cheap pass.
    """

    def __init__(self, allowed: Sequence[str], detected: Sequence[str], min_confidence: float) -> None:
        allowed_languages = parse_language_codes(allowed, "allowed_languages")
        candidates = frozenset(allowed_languages) | frozenset(parse_language_codes(detected, "detected_languages"))
        if len(candidates) < 2:
            raise ValueError("language detection needs at least two candidate languages: add to detected_languages")
        self.allowed = {language.iso_code_639_1.name.lower() for language in allowed_languages}
        self.min_confidence = min_confidence
        self._fast = _lingua_detector(candidates, low_accuracy=True)
        self._accurate = _lingua_detector(candidates, low_accuracy=False)

    def _best(self, detector, texts: list[str]) -> list[tuple[str | None, float]]:
        results = []
        for values in detector.compute_language_confidence_values_in_parallel(texts):
            best = values[0] if values else None
            if best is None or best.value < self.min_confidence:
                results.append((None, best.value if best else 0.0))
            else:
                results.append((best.language.iso_code_639_1.name.lower(), best.value))
        return results

    def detect(self, texts: Sequence[str]) -> list[tuple[str | None, float]]:
        """(code, confidence) of the most likely language per text; code None below min_confidence."""
        results = self._best(self._fast, list(texts))
        unsettled = [i for i, (code, _) in enumerate(results) if code not in self.allowed]
        for index, result in zip(unsettled, self._best(self._accurate, [texts[i] for i in unsettled])):
            results[index] = result
        return results
