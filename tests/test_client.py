"""Teacher client fault paths, injected at the transport level with respx."""

import asyncio
import json
from datetime import UTC

import httpx
import pytest
import respx

from opengrok_dagster.collect.client import (
    ClientLimits,
    TeacherClient,
    TeacherConfigurationError,
    TeacherEndpoint,
    parse_retry_after,
)
from opengrok_dagster.collect.result import Prices, SamplingParams


BASE = "http://teacher.test/v1"
URL = f"{BASE}/chat/completions"
CANARY = "sk-canary-5f1e2d3c4b5a"
MESSAGES = [{"role": "user", "content": "What are people saying about the derby?"}]
FAST = ClientLimits(max_attempts=4, backoff_initial_s=0.001, backoff_max_s=0.01, timeout_s=0.2)


def ok(text="fine", request_id="req-1", **extra):
    body = {
        "id": "cmpl-1",
        "model": "grok-test",
        "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5},
    }
    return httpx.Response(200, json=body, headers={"x-request-id": request_id, **extra})


def complete(limits=FAST, api_key=CANARY, prices=Prices(), sampling=SamplingParams()):
    async def go():
        async with TeacherClient(TeacherEndpoint(BASE, "grok-test", api_key), sampling, limits, prices) as client:
            return await client.complete(MESSAGES)

    return asyncio.run(go())


@respx.mock
def test_success_keeps_text_usage_cost_request_id_and_sends_sampling_and_key():
    route = respx.post(URL).mock(return_value=ok())
    result = complete(
        prices=Prices(prompt_per_million=2.0, completion_per_million=10.0),
        sampling=SamplingParams(0.3, 0.9, 64, seed=5),
    )
    assert (result.text, result.finish_reason, result.request_id, result.attempts) == ("fine", "stop", "req-1", 1)
    assert (result.prompt_tokens, result.completion_tokens) == (11, 5)
    assert result.cost_usd == pytest.approx((11 * 2 + 5 * 10) / 1e6)
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {CANARY}"
    assert json.loads(sent.content) | {} == {
        "model": "grok-test",
        "messages": MESSAGES,
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 5,
    }


@respx.mock
def test_429_waits_for_retry_after_then_succeeds(monkeypatch):
    waits = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds):
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    respx.post(URL).mock(side_effect=[httpx.Response(429, headers={"retry-after": "7"}), ok()])
    result = complete()
    assert result.ok and result.attempts == 2
    assert 7.0 in waits  # the server's Retry-After, not the 1 ms exponential backoff


@respx.mock
@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500),
        httpx.Response(503),
        httpx.Response(200, content=b'{"choices": [{"message": '),  # malformed JSON
        httpx.Response(200, json={"choices": [{"message": "not an object"}]}),  # well-formed JSON, unusable
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset by peer"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    ],
    ids=["500", "503", "malformed-json", "message-not-object", "connect", "reset", "timeout", "truncated"],
)
def test_transient_failures_are_retried(failure):
    route = respx.post(URL).mock(side_effect=[failure, failure, ok()])
    result = complete()
    assert result.ok and result.attempts == 3 and route.call_count == 3


@respx.mock
def test_persistent_failure_becomes_a_final_error_row_after_max_attempts():
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    result = complete()
    assert not result.ok and route.call_count == 4 and result.attempts == 4
    assert "gave up after 4 attempts" in result.error and "503" in result.error and result.status_code == 503
    assert "(no request id)" in result.error  # the response's allow-listed headers, here none


@respx.mock
@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_and_not_found_stop_at_once_naming_endpoint_never_the_key(status):
    route = respx.post(URL).mock(return_value=httpx.Response(status, json={"error": f"bad key {CANARY}"}))
    with pytest.raises(TeacherConfigurationError) as error:
        complete()
    assert route.call_count == 1
    assert URL in str(error.value) and f"HTTP {status}" in str(error.value)
    assert CANARY not in str(error.value) and CANARY not in repr(error.value)


@respx.mock
def test_400_is_a_per_prompt_error_without_retry_and_redacts_the_key():
    route = respx.post(URL).mock(
        return_value=httpx.Response(
            400, text=f"prompt too long; key {CANARY}", headers={"x-request-id": "req-9", "x-gateway-key": CANARY}
        )
    )
    result = complete()
    assert f"HTTP 400 from {URL} (x-request-id: req-9, content-type: text/plain; charset=utf-8)" in result.error
    assert route.call_count == 1 and result.status_code == 400
    assert "prompt too long" in result.error and CANARY not in result.error


def test_endpoint_repr_hides_the_key():
    assert CANARY not in repr(TeacherEndpoint(BASE, "m", CANARY))


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), ("0.5", 0.5), (None, None), ("soon", None), ("-4", 0.0)])
def test_parse_retry_after(header, seconds):
    assert parse_retry_after(header) == seconds


@pytest.mark.timing  # seconds from the wall clock's now
def test_retry_after_as_http_date_is_seconds_from_now():
    from datetime import datetime, timedelta
    from email.utils import format_datetime

    header = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(header) <= 31


@respx.mock
def test_concurrency_cap_is_never_exceeded():
    in_flight = peak = 0

    async def slow(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return ok()

    respx.post(URL).mock(side_effect=slow)

    async def go():
        async with TeacherClient(TeacherEndpoint(BASE, "m"), limits=ClientLimits(max_concurrency=3)) as client:
            return await asyncio.gather(*(client.complete(MESSAGES) for _ in range(20)))

    results = asyncio.run(go())
    assert all(r.ok for r in results) and peak == 3


@respx.mock
@pytest.mark.parametrize(
    ("body", "anomaly", "text"),
    [
        ({"choices": [{"message": {"content": None}, "finish_reason": "content_filter"}]}, "content_filter", None),
        (
            {
                "choices": [
                    {"message": {"content": None, "refusal": "I can't help with that."}, "finish_reason": "stop"}
                ]
            },
            "refusal",
            None,
        ),
        ({"choices": [{"message": {"content": None}, "finish_reason": "stop"}]}, "null_content", None),
        ({"choices": []}, "no_choices", None),
        (
            {
                "choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 129},
            },
            "overlong",
            "fine",
        ),
        ({"choices": [{"message": {"content": "x" * 600}, "finish_reason": "stop"}]}, "overlong", "x" * 600),
        (
            {
                "choices": [{"message": {"content": "fine"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 64},
            },
            None,
            "fine",
        ),
    ],
    ids=[
        "content-filter",
        "structured-refusal",
        "null-content",
        "no-choices",
        "overlong-usage",
        "overlong-text",
        "at-cap",
    ],
)
def test_refusals_and_odd_answers_are_recorded_as_what_they_are_without_retry(body, anomaly, text):
    route = respx.post(URL).mock(return_value=httpx.Response(200, json=body))
    result = complete(sampling=SamplingParams(max_tokens=64))
    assert route.call_count == 1 and result.ok  # paid for and final: a retry would pay again for the same refusal
    assert (result.anomaly, result.text) == (anomaly, text)
    assert result.finish_reason == (body["choices"][0]["finish_reason"] if body["choices"] else None)


@respx.mock
def test_logprobs_are_requested_and_kept_in_the_openai_shape():
    content = [
        {
            "token": "fine",
            "logprob": -0.1,
            "bytes": [102, 105, 110, 101],
            "top_logprobs": [
                {"token": "fine", "logprob": -0.1, "bytes": [102, 105, 110, 101]},
                {"token": "good", "logprob": -2.5, "bytes": None},
            ],
        }
    ]
    body = {
        "choices": [{"message": {"content": "fine"}, "finish_reason": "stop", "logprobs": {"content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    route = respx.post(URL).mock(return_value=httpx.Response(200, json=body))
    result = complete(sampling=SamplingParams(top_logprobs=2))
    sent = json.loads(route.calls.last.request.content)
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    assert result.ok and json.loads(result.logprobs) == content
    assert SamplingParams(top_logprobs=2).key() != SamplingParams().key()  # a different request, stored apart


@respx.mock
def test_an_endpoint_answering_without_logprobs_is_refused_clearly_keeping_the_answer():
    from opengrok_dagster.collect.client import LogprobsUnsupported

    respx.post(URL).mock(return_value=ok())  # e.g. `transformers serve`, which ignores logprobs
    with pytest.raises(
        LogprobsUnsupported, match="answered without logprobs though top_logprobs=5 was requested"
    ) as error:
        complete(sampling=SamplingParams(top_logprobs=5))
    assert error.value.result.text == "fine" and error.value.result.error  # kept as an error row, asked again later


def test_top_logprobs_beyond_what_the_provider_returns_is_refused_before_sending():
    with pytest.raises(ValueError, match="top_logprobs=12 is more than api.x.ai returns \\(8\\)"):
        TeacherClient(TeacherEndpoint("https://api.x.ai/v1", "grok-4"), SamplingParams(top_logprobs=12))
    TeacherClient(TeacherEndpoint("https://api.openai.com/v1", "gpt-4o"), SamplingParams(top_logprobs=12))
    with pytest.raises(ValueError, match="top_logprobs=21 must be between 0 and 20"):
        SamplingParams(top_logprobs=21)


@respx.mock
@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ConnectError("[Errno -2] Name or service not known"),
        httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
    ],
    ids=["refused", "dns", "tls"],
)
def test_connection_failures_in_a_row_stop_naming_the_redacted_endpoint(failure):
    from opengrok_dagster.collect.client import EndpointUnreachable

    secret_base = "http://proxyuser:pw-canary-77aa@teacher.test/v1"
    route = respx.post(f"{secret_base}/chat/completions").mock(side_effect=failure)

    async def go():
        limits = ClientLimits(max_attempts=6, max_connection_failures=3, backoff_initial_s=0.001, backoff_max_s=0.01)
        async with TeacherClient(TeacherEndpoint(secret_base, "grok-test", CANARY), limits=limits) as client:
            return await client.complete(MESSAGES)

    with pytest.raises(EndpointUnreachable) as error:
        asyncio.run(go())
    assert route.call_count == 3  # not max_attempts: the endpoint is not there
    message = str(error.value)
    assert "cannot reach the teacher endpoint http://***@teacher.test/v1: 3 connection attempts in a row" in message
    assert "check the base URL" in message and "pw-canary-77aa" not in message and CANARY not in message


@respx.mock
@pytest.mark.parametrize(
    "failure",
    [httpx.Response(503), httpx.ReadTimeout("timed out"), httpx.ConnectTimeout("timed out")],
    ids=["503", "read-timeout", "connect-timeout"],
)
def test_timeouts_and_5xx_keep_retrying_to_max_attempts(failure):
    route = respx.post(URL).mock(return_value=failure) if isinstance(failure, httpx.Response) else None
    route = route or respx.post(URL).mock(side_effect=failure)
    result = complete(limits=ClientLimits(max_attempts=5, max_connection_failures=2, backoff_initial_s=0.001,
                                          backoff_max_s=0.01, timeout_s=0.2))  # fmt: skip
    assert not result.ok and route.call_count == 5 and "gave up after 5 attempts" in result.error


@respx.mock
def test_a_response_between_connection_failures_resets_the_count():
    refused = httpx.ConnectError("refused")
    route = respx.post(URL).mock(side_effect=[refused, refused, ok(), refused, refused, ok()])

    async def go():
        limits = ClientLimits(max_concurrency=1, max_connection_failures=3, backoff_initial_s=0.001,
                              backoff_max_s=0.01)  # fmt: skip
        async with TeacherClient(TeacherEndpoint(BASE, "grok-test"), limits=limits) as client:
            return [await client.complete(MESSAGES), await client.complete(MESSAGES)]

    assert all(result.ok for result in asyncio.run(go())) and route.call_count == 6


def test_max_connection_failures_must_be_positive():
    with pytest.raises(ValueError, match="max_connection_failures must be >= 1"):
        ClientLimits(max_connection_failures=0)
