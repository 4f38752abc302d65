"""Requests-per-minute and tokens-per-minute limits for the teacher client.

A token bucket refilled at ``(limit - burst) / 60`` per second with capacity ``burst`` admits at most
``limit`` units in any 60-second window, which is how providers count, while spreading requests evenly
instead of spending a whole minute's allowance in the first second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from opengrok_dagster.collect.store import ResponseStore


class TokenBucket:
    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError(f"a per-minute limit must be > 0, got {per_minute}")
        self.capacity = max(1.0, per_minute / 60.0)
        # Below 2/min the exact guarantee would leave no refill at all; accept one unit of overshoot there.
        self.rate_per_s = (per_minute - self.capacity) / 60.0 if per_minute >= 2 else per_minute / 60.0
        self._level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate_per_s)
        self._updated = now

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` may be spent. An amount above capacity waits for a full bucket and
        leaves it in debt, so one oversized request is delayed, never refused."""
        need = min(amount, self.capacity)
        async with self._lock:  # FIFO: callers are served in arrival order
            while True:
                self._refill()
                if self._level >= need - 1e-9:  # tolerate float rounding in the refill
                    self._level -= amount
                    return
                await self._sleep((need - self._level) / self.rate_per_s)

    def refund(self, amount: float) -> None:
        """Give back an over-estimate (e.g. estimated tokens minus the tokens the server reported)."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)


class RateLimiter:
    """Both limits together; ``None`` disables one."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None, **bucket_kwargs) -> None:
        self.requests = TokenBucket(requests_per_minute, **bucket_kwargs) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, **bucket_kwargs) if tokens_per_minute else None

    async def acquire(self, estimated_tokens: int) -> None:
        if self.requests:
            await self.requests.acquire(1)
        if self.tokens:
            await self.tokens.acquire(estimated_tokens)

    def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        if self.tokens and actual_tokens is not None and actual_tokens < estimated_tokens:
            self.tokens.refund(estimated_tokens - actual_tokens)


class SharedRateLimiter:
    """The same limits across every process that shares one response store (parallel partitions, a schedule
    tick beside a manual run): a sliding window of admitted requests in SQLite admits at most ``requests_per_minute``
    requests and ``tokens_per_minute`` tokens in any window of ``window_s`` seconds, whoever sends them."""

    def __init__(
        self,
        store: ResponseStore,
        scope: str,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        window_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        for limit in (requests_per_minute, tokens_per_minute):
            if limit is not None and limit <= 0:
                raise ValueError(f"a per-minute limit must be > 0, got {limit}")
        self._store, self._scope, self._window_s, self._sleep = store, scope, window_s, sleep
        self._requests, self._tokens = requests_per_minute, tokens_per_minute

    async def acquire(self, estimated_tokens: int) -> int:
        """Wait until the window admits one more request; returns its ticket for :meth:`settle`."""
        while True:
            ticket, wait_s = await asyncio.to_thread(
                self._store.rates.admit, self._scope, self._window_s, self._requests, self._tokens, estimated_tokens
            )
            if ticket is not None:
                return ticket
            await self._sleep(min(wait_s, self._window_s))

    async def settle(self, ticket: int, actual_tokens: int | None) -> None:
        if actual_tokens is not None:
            await asyncio.to_thread(self._store.rates.settle, ticket, actual_tokens)
