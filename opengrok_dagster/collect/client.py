"""Async client for an OpenAI-compatible ``/v1/chat/completions`` endpoint (Grok, vLLM, transformers serve...).

Retries (tenacity): 429, 5xx, timeouts, connection errors and unreadable bodies, with exponential backoff
and jitter, honouring ``Retry-After``; but ``max_connection_failures`` connection failures in a row (refused,
DNS, TLS) stop everything with :class:`EndpointUnreachable`: an endpoint that is not there fails in seconds.
Never retried: 400/401/403/404 and other 4xx, which cannot succeed by waiting, and answers that are odd but
final (a refusal, a content filter, null content, no choices, an answer far past max_tokens): they are paid
for and recorded as what they are (``anomaly``), for the filter and the prompt feedback to count. The API key is sent only in the Authorization header; it and the
credentials a URL may hold are redacted from every message (``opengrok_dagster.redact``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from opengrok_dagster.collect.ratelimit import RateLimiter, SharedRateLimiter
from opengrok_dagster.collect.result import (
    OPENAI_TOP_LOGPROBS_LIMIT,
    REFUSED_ANOMALIES,
    Prices,
    SamplingParams,
    TeacherResult,
    UnreadableAnswer,
    result_from_payload,
)
from opengrok_dagster.redact import header_note, redact_http_logs, redact_text, redact_url, url_secrets


if TYPE_CHECKING:
    from opengrok_dagster.collect.budget import Budget


@dataclass(frozen=True)
class TeacherEndpoint:
    """Where the teacher lives. ``label`` names the model in stored rows (defaults to ``model``)."""

    base_url: str = field(repr=False)  # may hold credentials (userinfo, ?api_key=): written only as redacted_url
    model: str
    api_key: str | None = field(default=None, repr=False)
    label: str | None = None

    @property
    def redacted_url(self) -> str:
        """The base URL as it may be written: userinfo and credential-like query values masked."""
        return redact_url(self.base_url)

    def redact(self, text: str) -> str:
        """``text`` with this endpoint's key and every URL's credentials masked: for anything written."""
        return redact_text(text, (self.api_key, *url_secrets(self.base_url)))

    @property
    def model_label(self) -> str:
        return self.label or self.model

    @property
    def chat_url(self) -> str:
        """The chat-completions URL; a query in the base URL (a gateway's ``?api_key=``) stays the query."""
        url = httpx.URL(self.base_url)
        return str(url.copy_with(path=url.path.rstrip("/") + "/chat/completions"))

    def check_top_logprobs(self, top_logprobs: int | None) -> None:
        """Refuse a top_logprobs the provider would reject, before anything is sent."""
        host = httpx.URL(self.base_url).host
        limit = TOP_LOGPROBS_LIMITS.get(host, OPENAI_TOP_LOGPROBS_LIMIT)
        if top_logprobs is not None and top_logprobs > limit:
            raise ValueError(
                f"top_logprobs={top_logprobs} is more than {host} returns ({limit}); "
                f"set OPENGROK_TEACHER_TOP_LOGPROBS to at most {limit}"
            )


# The most top_logprobs a provider returns, by API host; others are held to OpenAI's limit.
TOP_LOGPROBS_LIMITS = {"api.x.ai": 8}


@dataclass(frozen=True)
class ClientLimits:
    max_concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    timeout_s: float = 120.0
    max_attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 120.0
    # Connection-level failures (refused, DNS, TLS, a bad scheme) in a row, across all prompts, after which the
    # endpoint is judged absent and the collection stops (EndpointUnreachable) instead of retrying every prompt.
    max_connection_failures: int = 3

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_connection_failures < 1:
            raise ValueError(f"max_connection_failures must be >= 1, got {self.max_connection_failures}")


class TeacherConfigurationError(RuntimeError):
    """The endpoint refused us in a way no retry fixes (401/403/404): stop collecting and tell the user."""


class EndpointUnreachable(TeacherConfigurationError):
    """``max_connection_failures`` connection attempts in a row failed: the endpoint is not there (a typo in the
    URL, a closed port, DNS or TLS). The prompt being asked is not recorded: it stays missing for the next run."""


# Failures to reach the endpoint at all; a timeout, a reset or a 5xx means it is there, and is retried instead.
CONNECTION_FAILURES = (httpx.ConnectError, httpx.UnsupportedProtocol)


class LogprobsUnsupported(TeacherConfigurationError):
    """Logprobs were requested and the endpoint answered without them. ``result`` is the answer, kept as an
    error row (it lacks what its sampling key promises; the next run asks again)."""

    def __init__(self, message: str, result: TeacherResult) -> None:
        super().__init__(message)
        self.result = result


class _Retryable(Exception):
    def __init__(self, message: str, *, status_code: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class _Final(Exception):
    """A per-prompt failure that retrying cannot fix (e.g. 400 for this prompt)."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def characters_token_count(messages: list[dict[str, str]]) -> int:
    """Prompt tokens without a tokenizer: ~4 characters a token plus a few tokens of chat framing a message."""
    return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages)


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """Upper-ish estimate for the TPM bucket before the server reports usage."""
    return characters_token_count(messages) + max_tokens


class TeacherClient:
    """Use as ``async with TeacherClient(...) as client: await client.complete(messages)``."""

    def __init__(
        self,
        endpoint: TeacherEndpoint,
        sampling: SamplingParams = SamplingParams(),
        limits: ClientLimits = ClientLimits(),
        prices: Prices = Prices(),
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        shared_limiter: SharedRateLimiter | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.sampling = sampling
        self.limits = limits
        self.prices = prices
        self._transport = transport
        self._rate = RateLimiter(limits.requests_per_minute, limits.tokens_per_minute)
        self._shared = shared_limiter  # the same limits across processes; the local buckets smooth each one
        self.budget = budget
        endpoint.check_top_logprobs(sampling.top_logprobs)
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        # Jitter in proportion to the first backoff, so many clients retrying together spread out.
        self._backoff = wait_exponential_jitter(
            multiplier=limits.backoff_initial_s, max=limits.backoff_max_s, jitter=limits.backoff_initial_s
        )
        self._http: httpx.AsyncClient | None = None
        self._connection_failures = 0  # in a row, across prompts; any HTTP response resets it
        redact_http_logs()

    async def __aenter__(self) -> TeacherClient:
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.limits.timeout_s),
            limits=httpx.Limits(
                max_connections=self.limits.max_concurrency, max_keepalive_connections=self.limits.max_concurrency
            ),
            transport=self._transport,
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._http.aclose()

    def _redact(self, text: str) -> str:
        return self.endpoint.redact(text)

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after_s is not None:
            return min(error.retry_after_s, self.limits.max_retry_after_s)
        return self._backoff(state)

    def worst_case_usd(self, messages: list[dict[str, str]]) -> float:
        """What one request can cost at most: the prompt estimate and max_tokens at the configured prices."""
        return self.prices.cost(characters_token_count(messages), self.sampling.max_tokens)

    async def complete(
        self, messages: list[dict[str, str]], prompt_id: str = "", response_format: dict | None = None
    ) -> TeacherResult:
        """Send one chat completion with retries (and ``response_format``, when given). Returns a result (``error`` set after the last attempt
        or on a per-prompt 4xx); raises :class:`TeacherConfigurationError` on 401/403/404, and
        :class:`~opengrok_dagster.collect.budget.BudgetExhausted` (sending nothing) when the budget is spent."""
        if self.budget is None:
            return await self._complete(messages, response_format)
        reservation = await self.budget.admit(prompt_id, self.worst_case_usd(messages))
        cost = 0.0  # a refused key (401...) costs nothing
        try:
            result = await self._complete(messages, response_format)
            cost = result.cost_usd
            return result
        except LogprobsUnsupported as exc:
            cost = exc.result.cost_usd
            raise
        finally:  # settled to the real cost
            await self.budget.settle(reservation, cost)

    async def _complete(self, messages: list[dict[str, str]], response_format: dict | None = None) -> TeacherResult:
        started = time.monotonic()
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.limits.max_attempts),
                wait=self._wait,
                retry=retry_if_exception_type(_Retryable),
                reraise=True,
            ):
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return await self._attempt(messages, started, attempts, response_format)
        except _Retryable as exc:
            return self._failure(f"gave up after {attempts} attempts: {exc}", exc.status_code, started, attempts)
        except _Final as exc:
            return self._failure(str(exc), exc.status_code, started, attempts)
        raise AssertionError("unreachable: tenacity either returns or reraises")

    def _failure(self, error: str, status_code: int | None, started: float, attempts: int) -> TeacherResult:
        return TeacherResult(
            text=None,
            finish_reason=None,
            model=None,
            prompt_tokens=None,
            completion_tokens=None,
            cost_usd=0.0,
            latency_s=time.monotonic() - started,
            attempts=attempts,
            request_id=None,
            error=self._redact(error),
            status_code=status_code,
        )

    def _connection_failed(self, error: Exception) -> None:
        """Count a connection-level failure; at ``max_connection_failures`` in a row, stop everything."""
        self._connection_failures += 1
        limit = self.limits.max_connection_failures
        if self._connection_failures >= limit:
            raise EndpointUnreachable(
                f"cannot reach the teacher endpoint {self.endpoint.redacted_url}: {limit} connection attempts in a "
                f"row failed ({type(error).__name__}: {self._redact(str(error)) or 'no detail'}); check the base URL "
                "(scheme, host, port) and that the server or gateway is running"
            ) from None

    async def _settle(self, ticket: int | None, estimated: int, actual: int | None) -> None:
        self._rate.settle(estimated, actual)
        if ticket is not None:
            await self._shared.settle(ticket, actual)

    def _raise_for_status(self, response: httpx.Response, raw: bytes, url: str) -> None:
        """What an HTTP error means: 429 and 5xx are retried (honouring Retry-After), 401/403/404 stop the whole
        collection with the fix, any other 4xx fails this prompt alone."""
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retryable(
                f"HTTP {status} from {url} ({header_note(response.headers) or 'no request id'})",
                status_code=status,
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            )
        if status in (401, 403, 404):
            hint = {
                401: "the API key was rejected: check the environment variable that holds it",
                403: "the API key may not use this model or endpoint",
                404: f"no such endpoint or model {self.endpoint.model!r}: check base_url and model",
            }[status]
            raise TeacherConfigurationError(f"HTTP {status} from {url}: {hint}")
        if status >= 400:
            body = self._redact(raw[:300].decode(errors="replace"))
            raise _Final(f"HTTP {status} from {url} ({header_note(response.headers)}): {body}", status)

    async def _attempt(
        self, messages: list[dict[str, str]], started: float, attempts: int, response_format: dict | None = None
    ) -> TeacherResult:
        body = {"model": self.endpoint.model, "messages": messages, **self.sampling.request_fields()}
        if response_format is not None:
            body["response_format"] = response_format
        estimated = estimate_tokens(messages, self.sampling.max_tokens)
        url = redact_url(self.endpoint.chat_url)  # what messages name; the request goes to chat_url
        async with self._slots:
            await self._rate.acquire(estimated)
            ticket = await self._shared.acquire(estimated) if self._shared else None
            try:
                response = await self._http.post(self.endpoint.chat_url, json=body)
                raw = await response.aread()
            except httpx.TimeoutException as exc:
                await self._settle(ticket, estimated, 0)
                raise _Retryable(
                    f"timeout after {self.limits.timeout_s:.0f}s ({type(exc).__name__}) from {url}"
                ) from None
            except httpx.TransportError as exc:
                await self._settle(ticket, estimated, 0)
                if isinstance(exc, CONNECTION_FAILURES):
                    self._connection_failed(exc)
                raise _Retryable(
                    f"connection error from {url}: {type(exc).__name__}: {self._redact(str(exc))}"
                ) from None
        self._connection_failures = 0
        status = response.status_code
        request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
        self._raise_for_status(response, raw, url)
        try:
            payload = json.loads(raw)
            usage = payload.get("usage") or {}
            actual = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0) if usage else None
        except (ValueError, AttributeError):
            payload, actual = None, None
        await self._settle(ticket, estimated, actual)
        try:
            result = result_from_payload(payload, self.sampling, self.prices, self.endpoint.model)
        except UnreadableAnswer as exc:
            raise _Retryable(f"unreadable response body from {url} ({exc})", status_code=status) from None
        result = replace(
            result, latency_s=time.monotonic() - started, attempts=attempts, request_id=request_id or result.request_id
        )
        if (
            self.sampling.top_logprobs is not None
            and result.anomaly not in REFUSED_ANOMALIES
            and result.logprobs is None
        ):
            raise LogprobsUnsupported(
                f"{url} answered without logprobs though top_logprobs={self.sampling.top_logprobs} was requested "
                "(a plain `transformers serve` ignores the field): unset OPENGROK_TEACHER_TOP_LOGPROBS or use an "
                "endpoint that returns logprobs (OpenAI, xAI, vLLM, the embedded teacher)",
                replace(result, error="the endpoint returned no logprobs"),
            )
        return result
