"""Models behind an OpenAI-compatible endpoint (the teacher, extra endpoints from config), asked with greedy decoding.

An optional endpoint that fails (refused key, unreachable, every request erroring) is reported, not fatal:
:class:`EndpointFailure` carries a message that names the endpoint and never the key. Given an
:class:`AnswerCache`, answers already paid for are reused and only the rest is asked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherConfigurationError, TeacherEndpoint
from opengrok_dagster.collect.result import Prices, SamplingParams, TeacherResult
from opengrok_dagster.evaluation.answers import AnswerCache, request_key
from opengrok_dagster.redact import redact_url


class EndpointFailure(RuntimeError):
    """The endpoint answered none of the evaluation's requests."""


@dataclass
class Usage:
    """What the evaluation sent one API model: requests, answers reused instead of asked, their tokens, and USD
    at the model's prices (None: no prices are known for it, so its requests are not priced)."""

    requests: int = 0
    reused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float | None = None

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.reused += other.reused
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        if other.usd is not None:
            self.usd = (self.usd or 0.0) + other.usd


class Answers(NamedTuple):
    texts: list[str | None]  # None where a request failed
    failed: int
    reused: int  # answers taken from the cache, not asked
    usage: Usage


class EndpointSpec(BaseModel):
    """An extra OpenAI-compatible model to compare; the key is read from the variable ``api_key_env`` names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Name the report uses for this model, e.g. 'gpt-4o' or 'phi-3-vllm'.")
    base_url: str = Field(description="OpenAI-compatible base URL ending in /v1.")
    model: str = Field(description="Model id sent to the endpoint.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding its API key (never the key)."
    )

    def endpoint(self) -> TeacherEndpoint:
        key = None
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise EndpointFailure(
                    f"endpoint {self.name!r}: environment variable {self.api_key_env} (its API key) is not set"
                )
        return TeacherEndpoint(self.base_url, self.model, key, label=self.name)


@dataclass(frozen=True)
class ApiModel:
    """``endpoint`` is called on first use, so the embedded teacher's server starts only if something is asked.

    ``description`` says which model answers (id and where it is served); cached answers are keyed by it.
    ``prices`` price its requests in the report (the teacher's configured prices); None: not priced.
    ``weights`` names the checkpoint behind the endpoint where it is known.
    """

    name: str
    endpoint: Callable[[], TeacherEndpoint]
    description: str
    limits: ClientLimits = ClientLimits(max_concurrency=8, max_attempts=3)
    prices: Prices | None = None
    # The checkpoint it serves, where known (a hub id or name): a teacher serving the student's own base checkpoint
    # makes the run self-distillation, which the report says instead of comparing student and teacher.
    weights: str | None = None

    @classmethod
    def from_spec(cls, spec: EndpointSpec) -> ApiModel:
        return cls(
            spec.name,
            spec.endpoint,
            f"{spec.model} at {redact_url(spec.base_url)}",
            ClientLimits(max_concurrency=4, max_attempts=2, timeout_s=60),
        )

    def complete_all(
        self, messages: list[list[dict[str, str]]], max_tokens: int, cache: AnswerCache | None = None
    ) -> Answers:
        keys = [request_key(m, max_tokens) for m in messages]
        known = cache.get_many(self.description, keys) if cache is not None else {}
        texts = [known.get(key) for key in keys]
        asked = [index for index, key in enumerate(keys) if key not in known]
        failed, usage = 0, Usage(usd=None if self.prices is None else 0.0)
        if asked:
            fresh, failed, usage = self._ask([messages[index] for index in asked], max_tokens)
            for index, text in zip(asked, fresh):
                texts[index] = text
            if cache is not None:
                cache.put_many(self.description, {keys[i]: text for i, text in zip(asked, fresh) if text is not None})
        usage.reused = len(messages) - len(asked)
        return Answers(texts, failed, usage.reused, usage)

    def _ask(self, messages: list[list[dict[str, str]]], max_tokens: int) -> tuple[list[str | None], int, Usage]:
        results = self.results(messages, SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_tokens))
        usage = Usage(
            requests=len(results),
            prompt_tokens=sum(r.prompt_tokens or 0 for r in results),
            completion_tokens=sum(r.completion_tokens or 0 for r in results),
            usd=None if self.prices is None else sum(r.cost_usd for r in results),
        )
        return [r.text if r.ok else None for r in results], sum(not r.ok for r in results), usage

    def results(self, messages: list[list[dict[str, str]]], sampling: SamplingParams) -> list[TeacherResult]:
        """Every request's outcome, uncached: the text, and the logprobs where ``sampling`` asks for them."""
        try:
            endpoint = self.endpoint()
        except EndpointFailure:
            raise
        except Exception as exc:  # a server that will not start or a bad setting: report, do not abort the report
            raise EndpointFailure(
                f"endpoint {self.name!r} could not be set up: {type(exc).__name__}: {str(exc)[:300]}"
            ) from None

        async def run():
            async with TeacherClient(endpoint, sampling, self.limits, self.prices or Prices()) as client:
                return await asyncio.gather(*(client.complete(m) for m in messages))

        try:
            results = asyncio.run(run())
        except TeacherConfigurationError as exc:
            raise EndpointFailure(f"endpoint {self.name!r} refused the requests: {exc}") from None
        failed = [r for r in results if not r.ok]
        if results and len(failed) == len(results):
            raise EndpointFailure(
                f"endpoint {self.name!r}: all {len(results)} requests failed, e.g. {failed[0].error}"
            )
        return results
