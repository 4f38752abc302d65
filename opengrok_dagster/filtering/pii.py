"""PII scrubbing as TimeLMs preprocesses tweets: mentions -> `@user`, URLs -> `http`; plus emails and phone
numbers -> `[email]`, `[phone]`. The kept text is always the scrubbed text."""

from __future__ import annotations

import re


USER = "@user"
URL = "http"
EMAIL = "[email]"
PHONE = "[phone]"

_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b", re.IGNORECASE)
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+", re.IGNORECASE)
# A handle is @ + 2-30 word characters not preceded by a word character (so not an email local part).
_HANDLE = re.compile(r"(?<![\w@])@(?!user\b)\w{2,30}\b", re.IGNORECASE)
# Digit groups joined by single spaces, dots or dashes, optionally +country and (area); 9-15 digits in all.
_PHONE_CANDIDATE = re.compile(r"(?<![\w+])\+?(?:\(\d{1,4}\)|\d{1,5})(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,5}(?!\w)")
_PHONE_DIGITS = range(9, 16)


def _phone(match: re.Match) -> str:
    digits = sum(char.isdigit() for char in match.group(0))
    return PHONE if digits in _PHONE_DIGITS else match.group(0)


def scrub_pii(text: str) -> str:
    """Replace emails, URLs, handles and phone numbers by placeholders (emails first: they contain an @)."""
    text = _EMAIL.sub(EMAIL, text)
    text = _URL.sub(URL, text)
    text = _HANDLE.sub(USER, text)
    return _PHONE_CANDIDATE.sub(_phone, text)


def find_pii(text: str) -> list[str]:
    """The PII kinds still present in ``text``: what the asset check looks for in the kept rows."""
    found = []
    if _EMAIL.search(text):
        found.append("email")
    if _URL.search(text):
        found.append("url")
    if _HANDLE.search(text):
        found.append("handle")
    if any(_phone(match) == PHONE for match in _PHONE_CANDIDATE.finditer(text)):
        found.append("phone")
    return found
