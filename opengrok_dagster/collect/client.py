"""Async client for an OpenAI-compatible ``/v1/chat/completions`` endpoint (Grok, vLLM, transformers serve...).

Retries (tenacity): 429, 5xx, timeouts, connection errors and unreadable bodies, with exponential backoff
and jitter, honouring ``Retry-After``. Never retried: 400/401/403/404 and other 4xx, which cannot succeed
by waiting. The API key is sent only in the Authorization header and redacted from every message.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from opengrok_dagster.collect.ratelimit import RateLimiter


@dataclass(frozen=True)
class TeacherEndpoint:
    """Where the teacher lives. ``label`` names the model in stored rows (defaults to ``model``)."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    label: str | None = None

    @property
    def model_label(self) -> str:
        return self.label or self.model

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = None

    def request_fields(self) -> dict:
        fields = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        return fields | ({"seed": self.seed} if self.seed is not None else {})

    def key(self) -> str:
        """Canonical text of the parameters: part of the response store's key."""
        return json.dumps(self.request_fields(), sort_keys=True, separators=(",", ":"))


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

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


@dataclass(frozen=True)
class Prices:
    """USD per million tokens, for the cost estimate."""

    prompt_per_million: float = 0.0
    completion_per_million: float = 0.0

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) * self.prompt_per_million + (completion_tokens or 0) * self.completion_per_million) / 1e6


@dataclass
class TeacherResult:
    """One prompt's outcome: a response, or the final error after retries."""

    text: str | None
    finish_reason: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float
    latency_s: float
    attempts: int
    request_id: str | None
    error: str | None = None
    status_code: int | None = None
    response_format: str | None = None  # the structured-output mode an annotation prompt was answered in

    @property
    def ok(self) -> bool:
        return self.error is None


class TeacherConfigurationError(RuntimeError):
    """The endpoint refused us in a way no retry fixes (401/403/404): stop collecting and tell the user."""


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


def estimate_tokens(messages: list[dict[str, str]], max_tokens: int) -> int:
    """Upper-ish estimate for the TPM bucket before the server reports usage: ~4 characters a token."""
    return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages) + max_tokens


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
    ) -> None:
        self.endpoint = endpoint
        self.sampling = sampling
        self.limits = limits
        self.prices = prices
        self._transport = transport
        self._rate = RateLimiter(limits.requests_per_minute, limits.tokens_per_minute)
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        # Jitter in proportion to the first backoff, so many clients retrying together spread out.
        self._backoff = wait_exponential_jitter(
            multiplier=limits.backoff_initial_s, max=limits.backoff_max_s, jitter=limits.backoff_initial_s
        )
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> "TeacherClient":
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.limits.timeout_s),
            limits=httpx.Limits(max_connections=self.limits.max_concurrency, max_keepalive_connections=self.limits.max_concurrency),
            transport=self._transport,
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._http.aclose()

    def _redact(self, text: str) -> str:
        key = self.endpoint.api_key
        return text.replace(key, "***") if key else text

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after_s is not None:
            return min(error.retry_after_s, self.limits.max_retry_after_s)
        return self._backoff(state)

    async def complete(self, messages: list[dict[str, str]], response_format: dict | None = None) -> TeacherResult:
        """Send one chat completion with retries (and ``response_format``, when given). Returns a result
        (``error`` set after the last attempt or on a per-prompt 4xx); raises :class:`TeacherConfigurationError`
        on 401/403/404."""
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
            text=None, finish_reason=None, model=None, prompt_tokens=None, completion_tokens=None, cost_usd=0.0,
            latency_s=time.monotonic() - started, attempts=attempts, request_id=None,
            error=self._redact(error), status_code=status_code,
        )

    async def _attempt(
        self, messages: list[dict[str, str]], started: float, attempts: int, response_format: dict | None = None
    ) -> TeacherResult:
        body = {"model": self.endpoint.model, "messages": messages, **self.sampling.request_fields()}
        if response_format is not None:
            body["response_format"] = response_format
        estimated = estimate_tokens(messages, self.sampling.max_tokens)
        url = self.endpoint.chat_url
        async with self._slots:
            await self._rate.acquire(estimated)
            try:
                response = await self._http.post(url, json=body)
                raw = await response.aread()
            except httpx.TimeoutException as exc:
                self._rate.settle(estimated, 0)
                raise _Retryable(f"timeout after {self.limits.timeout_s:.0f}s ({type(exc).__name__}) from {url}") from None
            except httpx.TransportError as exc:
                self._rate.settle(estimated, 0)
                raise _Retryable(f"connection error from {url}: {type(exc).__name__}: {self._redact(str(exc))}") from None
        status = response.status_code
        request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
        if status == 429 or status >= 500:
            raise _Retryable(
                f"HTTP {status} from {url} (request id {request_id})",
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
            raise _Final(f"HTTP {status} from {url}: {self._redact(raw[:300].decode(errors='replace'))}", status)
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"unreadable response body from {url} ({type(exc).__name__}: {exc})", status_code=status) from None
        usage = payload.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self._rate.settle(estimated, (prompt_tokens or 0) + (completion_tokens or 0) if usage else None)
        return TeacherResult(
            text=text,
            finish_reason=choice.get("finish_reason"),
            model=payload.get("model") or self.endpoint.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self.prices.cost(prompt_tokens, completion_tokens),
            latency_s=time.monotonic() - started,
            attempts=attempts,
            request_id=request_id or payload.get("id"),
        )
