"""What one prompt's answer is, independent of how it was asked: sampling parameters, prices, the response record
(text, usage, cost, anomaly) and how a chat-completion body becomes one. The online client, the batch path and the
response store share it, so the store does not depend on the HTTP client."""

from __future__ import annotations

import json
from dataclasses import dataclass


OPENAI_TOP_LOGPROBS_LIMIT = 20


@dataclass(frozen=True)
class SamplingParams:
    """``top_logprobs``: request each answer token's logprob and its k most likely alternatives (None: none)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int | None = None
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= OPENAI_TOP_LOGPROBS_LIMIT:
            raise ValueError(
                f"top_logprobs={self.top_logprobs} must be between 0 and {OPENAI_TOP_LOGPROBS_LIMIT} "
                "(OpenAI allows 20, xAI 8), or unset for no logprobs"
            )

    def request_fields(self) -> dict:
        fields = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.top_logprobs is not None:
            fields |= {"logprobs": True, "top_logprobs": self.top_logprobs}
        return fields | ({"seed": self.seed} if self.seed is not None else {})

    def key(self) -> str:
        """Canonical text of the parameters: part of the response store's key."""
        return json.dumps(self.request_fields(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Prices:
    """USD per million tokens, for the cost estimate."""

    prompt_per_million: float = 0.0
    completion_per_million: float = 0.0

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return (
            (prompt_tokens or 0) * self.prompt_per_million + (completion_tokens or 0) * self.completion_per_million
        ) / 1e6


# What an answer that is no plain text is recorded as (the ``anomaly`` column); none of them is retried.
CONTENT_FILTER = "content_filter"  # finish_reason "content_filter": the provider filtered the answer
REFUSAL = "refusal"  # message.refusal set: the model declined (OpenAI's structured refusal field)
NULL_CONTENT = "null_content"  # message.content null without either of the above
NO_CHOICES = "no_choices"  # a well-formed body with an empty choices list
OVERLONG = "overlong"  # more than OVERLONG_FACTOR x max_tokens: the endpoint ignored the cap (or its usage is wrong)
REFUSED_ANOMALIES = (CONTENT_FILTER, REFUSAL, NULL_CONTENT, NO_CHOICES)
OVERLONG_FACTOR = 2.0


def answer_anomaly(choices: list, max_tokens: int, completion_tokens: int | None) -> str | None:
    """What is odd about a well-formed response, or None for a plain text answer."""
    if not choices:
        return NO_CHOICES
    choice = choices[0]
    message = choice.get("message") or {}
    if choice.get("finish_reason") == CONTENT_FILTER:
        return CONTENT_FILTER
    if message.get("refusal"):
        return REFUSAL
    if message.get("content") is None:
        return NULL_CONTENT
    # Without reported usage, ~4 characters a token.
    tokens = completion_tokens if completion_tokens is not None else len(message["content"]) / 4
    return OVERLONG if tokens > OVERLONG_FACTOR * max_tokens else None


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
    anomaly: str | None = None
    logprobs: str | None = None  # JSON text of choices[0].logprobs.content, when requested
    response_format: str | None = None  # the structured-output mode an annotation prompt was answered in

    @property
    def ok(self) -> bool:
        return self.error is None


class UnreadableAnswer(ValueError):
    """A chat-completion body that is not one (malformed JSON, choices not a list of messages...)."""


def result_from_payload(payload: object, sampling: SamplingParams, prices: Prices, model: str) -> TeacherResult:
    """The outcome recorded for one chat-completion body, online or from a batch's output file; latency and
    attempts are the caller's. Raises :class:`UnreadableAnswer` for a body that is not a chat completion."""
    try:
        choices = payload["choices"]
        if not isinstance(choices, list) or (choices and not isinstance(choices[0].get("message"), dict)):
            raise TypeError("choices is not a list of messages")
        text = choices[0]["message"].get("content") if choices else None
        if text is not None and not isinstance(text, str):
            raise TypeError("message content is not a string")
        usage = payload.get("usage") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise UnreadableAnswer(f"{type(exc).__name__}: {exc}") from None
    content = (
        (choices[0].get("logprobs") or {}).get("content") if choices and sampling.top_logprobs is not None else None
    )
    return TeacherResult(
        text=text,
        finish_reason=choices[0].get("finish_reason") if choices else None,
        model=payload.get("model") or model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=prices.cost(prompt_tokens, completion_tokens),
        latency_s=0.0,
        attempts=1,
        request_id=payload.get("id"),
        anomaly=answer_anomaly(choices, sampling.max_tokens, completion_tokens),
        logprobs=json.dumps(content, ensure_ascii=False) if isinstance(content, list) else None,
    )
