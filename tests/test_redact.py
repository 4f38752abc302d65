"""The one redaction rule: what of a URL, a header or a message may be written."""

import logging

import pytest

from opengrok_dagster.collect.client import TeacherEndpoint
from opengrok_dagster.redact import (
    MASK,
    RedactingFilter,
    header_note,
    is_credential_parameter,
    redact_headers,
    redact_text,
    redact_url,
    url_secrets,
)


SECRET = "s3cr3t-canary-71f0"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.x.ai/v1", "https://api.x.ai/v1"),
        (f"https://user:{SECRET}@gateway.test/v1", "https://***@gateway.test/v1"),
        (f"https://{SECRET}@gateway.test:8443/v1", "https://***@gateway.test:8443/v1"),
        (f"https://gateway.test/v1?api_key={SECRET}&region=eu", "https://gateway.test/v1?api_key=***&region=eu"),
        (f"https://g.test/v1?X-Api-Key={SECRET}", "https://g.test/v1?X-Api-Key=***"),
        (f"https://g.test/v1?sig={SECRET}&se=2030", "https://g.test/v1?sig=***&se=2030"),
        (f"https://g.test/v1?access_token={SECRET}", "https://g.test/v1?access_token=***"),
        ("https://g.test/v1?region=eu&model=grok", "https://g.test/v1?region=eu&model=grok"),
    ],
)
def test_urls_lose_userinfo_and_credential_query_values_and_keep_the_rest(url, expected):
    assert redact_url(url) == expected
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize("name", ["key", "api_key", "apikey", "API-KEY", "token", "sig", "signature", "secret",
                                  "password", "auth", "client_secret", "refresh_token", "subscription-key"])  # fmt: skip
def test_credential_like_parameter_names(name):
    assert is_credential_parameter(name)


@pytest.mark.parametrize("name", ["region", "model", "version", "deployment", "se"])
def test_ordinary_parameter_names(name):
    assert not is_credential_parameter(name)


def test_text_masks_urls_bearer_values_and_named_secrets():
    text = (
        f"gave up after 6 attempts: connection error from http://proxyuser:{SECRET}@127.0.0.1:9/v1/chat/completions "
        f"(Authorization: Bearer sk-{SECRET})"
    )
    redacted = redact_text(text)
    assert SECRET not in redacted
    assert "http://***@127.0.0.1:9/v1/chat/completions" in redacted and "Bearer ***" in redacted
    assert redact_text(f"refused: {SECRET}", [SECRET]) == f"refused: {MASK}"


def test_the_secrets_of_a_url_are_its_password_and_credential_query_values():
    assert url_secrets(f"http://u:{SECRET}@h/v1?token=t0k3n-long&region=eu") == [SECRET, "t0k3n-long"]
    assert url_secrets("http://h/v1") == []


def test_header_values_outside_the_allow_list_never_appear():
    headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET, "x-request-id": "req-1", "Retry-After": "3"}
    assert redact_headers(headers) == {"Authorization": MASK, "X-Api-Key": MASK, "x-request-id": "req-1",
                                       "Retry-After": "3"}  # fmt: skip
    assert header_note(headers | {"Set-Cookie": SECRET}) == "x-request-id: req-1, retry-after: 3"


def test_an_endpoint_never_shows_its_url_credentials_in_repr_or_messages():
    endpoint = TeacherEndpoint(f"http://u:{SECRET}@h:1/v1?api_key={SECRET}x", "m", api_key=f"xai-{SECRET}")
    assert SECRET not in repr(endpoint) and SECRET not in endpoint.redacted_url
    assert endpoint.redact(f"failed {endpoint.chat_url} with key xai-{SECRET} ({SECRET})").count(MASK) >= 3
    assert SECRET not in endpoint.redact(f"failed {endpoint.chat_url} with key xai-{SECRET} ({SECRET})")
    assert endpoint.chat_url == f"http://u:{SECRET}@h:1/v1/chat/completions?api_key={SECRET}x"  # the query stays


def test_http_library_log_records_are_redacted():
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, 'HTTP Request: %s %s "%s"', (
        "POST", f"http://u:{SECRET}@h/v1/chat/completions?key={SECRET}", "HTTP/1.1 200 OK"), None)  # fmt: skip
    assert RedactingFilter().filter(record)
    assert SECRET not in record.getMessage() and "http://***@h/v1/chat/completions?key=***" in record.getMessage()
