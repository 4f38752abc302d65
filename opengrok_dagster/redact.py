"""The one redaction rule for endpoint URLs and HTTP headers, applied before any of them is written anywhere
(store rows, exceptions, step failures, metadata, logs, reports, lineage).

Some gateways take the key in the URL (``https://user:KEY@gateway/v1``, ``...?api_key=KEY``), so a URL is
never written as given: its userinfo and every query parameter whose name looks like a credential become
``***``. Header values are written only for a short allow-list of names that never carry a credential.
Dagster-free, imported by every stage that talks to an endpoint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit


MASK = "***"

# Query parameter names that carry credentials, compared case-insensitively with '-' read as '_'. A name that
# ends in one of CREDENTIAL_SUFFIXES counts too (x_api_key, client_secret, auth_token, refresh_token...).
CREDENTIAL_PARAMETERS = frozenset(
    {"key", "api_key", "apikey", "token", "access_token", "sig", "signature", "secret", "password", "passwd",
     "pwd", "auth", "authorization", "credential", "credentials", "code", "session", "jwt", "bearer"}
)  # fmt: skip
CREDENTIAL_SUFFIXES = ("key", "token", "secret", "password", "_sig", "signature")

# Header names whose values may be written (diagnostics that carry no credential), in the order an error names
# them; every other header's value (Authorization, cookies, a gateway's own key header...) is never written.
ALLOWED_HEADERS = (
    "x-request-id", "request-id", "retry-after", "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "content-type", "server",
)  # fmt: skip

# A URL inside free text: a scheme, then anything up to whitespace or a quote/bracket that ends it in prose.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# A bearer/basic credential written after its scheme, e.g. "Authorization: Bearer sk-...".
_AUTH_VALUE = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)


def is_credential_parameter(name: str) -> bool:
    normal = name.strip().lower().replace("-", "_")
    return normal in CREDENTIAL_PARAMETERS or normal.endswith(CREDENTIAL_SUFFIXES)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and credential-like query values replaced by ``***``; otherwise unchanged."""
    try:
        parts = urlsplit(url)
        host_port = parts.netloc.rpartition("@")[2]
    except ValueError:  # not a URL urllib can read (an unbalanced IPv6 bracket...): keep nothing after the scheme
        return url.split("://", 1)[0] + "://" + MASK if "://" in url else MASK
    netloc = f"{MASK}@{host_port}" if "@" in parts.netloc else parts.netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_credential_parameter(name) for name, _ in pairs):
            query = "&".join(
                f"{quote(name, safe='')}={MASK if is_credential_parameter(name) else quote(value, safe='')}"
                for name, value in pairs
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The credential values a URL holds (its userinfo password, credential-like query values): what
    :func:`redact_text` must also mask where they appear without their URL (an HTTP library's message...)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [value for name, value in parse_qsl(parts.query) if is_credential_parameter(name)]
    except ValueError:
        return []
    return [value for value in found if len(value) >= MIN_SECRET_LENGTH]


# Shorter values are not masked as free text (they would mangle ordinary words); inside a URL they always are.
MIN_SECRET_LENGTH = 4


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Free text (an error message, a log line) with every URL in it redacted, bearer/basic credentials masked
    and each of ``secrets`` (e.g. the API key) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
    return _AUTH_VALUE.sub(lambda match: f"{match.group(1)} {MASK}", text)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names with their values, each value outside :data:`ALLOWED_HEADERS` replaced by ``***``."""
    return {name: value if name.lower() in ALLOWED_HEADERS else MASK for name, value in headers.items()}


def header_note(headers: Mapping[str, str]) -> str:
    """The allow-listed headers of a response as ``name: value, ...`` (for an error message), nothing else."""
    lowered = {name.lower(): value for name, value in redact_headers(headers).items()}
    return ", ".join(f"{name}: {lowered[name]}" for name in ALLOWED_HEADERS if name in lowered)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through :func:`redact_text` (httpx logs each request's full URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


# The HTTP libraries that write request URLs into their log records.
HTTP_LOGGERS = ("httpx", "httpcore", "openai", "urllib3")


def redact_http_logs() -> None:
    """Install :class:`RedactingFilter` on the HTTP libraries' loggers once per process (idempotent)."""
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
