"""One teacher as every path asks it: where it is, how to sample, the client's limits, the prices and the batch
settings. The online client (:meth:`TeacherSpec.client`) and the batch path (``batch.collect_batch``) are both
built from it, so the two cannot differ in what they send or what it costs."""

from __future__ import annotations

from dataclasses import dataclass

from opengrok_dagster.collect.budget import Budget
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.ratelimit import SharedRateLimiter
from opengrok_dagster.collect.result import Prices, SamplingParams
from opengrok_dagster.collect.store import ResponseStore


@dataclass(frozen=True)
class BatchSettings:
    """How a batch is submitted, waited for and priced (``TeacherResource.batch_poll_s``, ``batch_price_factor``)."""

    poll_s: float = 30.0  # seconds between polls of the batch's status (TeacherResource.batch_poll_s)
    completion_window: str = "24h"
    price_factor: float = 0.5  # batch price / online price (OpenAI: half; set xAI's rate for Grok)
    max_wait_s: float = 26 * 3600.0  # past the completion window: the provider should have expired it

    def __post_init__(self) -> None:
        if not self.poll_s > 0:
            raise ValueError(f"batch_poll_s={self.poll_s} must be a positive number of seconds between polls")
        if not 0 < self.price_factor <= 1:
            raise ValueError(
                f"batch_price_factor={self.price_factor} must be in (0, 1]: the batch price over the online price"
            )

    def prices(self, online: Prices) -> Prices:
        """The batch price of each token: the online price times ``price_factor``."""
        return Prices(online.prompt_per_million * self.price_factor, online.completion_per_million * self.price_factor)


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher both collection paths ask (``TeacherResource.spec()`` builds it from the resource's settings)."""

    endpoint: TeacherEndpoint
    sampling: SamplingParams = SamplingParams()
    limits: ClientLimits = ClientLimits()
    prices: Prices = Prices()
    batch: BatchSettings = BatchSettings()

    def client(self, store: ResponseStore | None = None, budget: Budget | None = None) -> TeacherClient:
        """A fresh online client (enter it with ``async with``). With ``store``, the RPM/TPM limits hold across
        every process that shares it (one account's limits, one window); with a limited ``budget``, a request is
        sent only if its worst case fits."""
        limits, shared = self.limits, None
        if store is not None and (limits.requests_per_minute or limits.tokens_per_minute):
            shared = SharedRateLimiter(
                store,
                f"{self.endpoint.redacted_url}|{self.endpoint.model}",
                limits.requests_per_minute,
                limits.tokens_per_minute,
            )
        return TeacherClient(
            self.endpoint,
            self.sampling,
            limits,
            self.prices,
            shared_limiter=shared,
            budget=budget if budget is not None and budget.limits.limited else None,
        )
