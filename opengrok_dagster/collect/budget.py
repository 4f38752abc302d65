"""Spend control for a paid teacher: a per-run and a per-UTC-day budget, kept in the response store.

Before each request the client reserves its worst case (prompt estimate + max_tokens at the configured
prices) and sends only if that fits what is left of both budgets; when the answer arrives the reservation
is settled to the real cost. So spend can pass a budget by at most the difference between one request's
estimate and its real cost, and no budget is spent on what was not sent. A reservation a killed run never
settled keeps counting at its worst case: the provider may have billed it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from opengrok_dagster.collect.store import ResponseStore


class BudgetExhausted(Exception):
    """The next request's worst case does not fit what is left: stop admitting; unsent prompts stay missing."""


@dataclass(frozen=True)
class BudgetLimits:
    """USD per run and per UTC day (across runs and processes); None: no limit."""

    run_usd: float | None = None
    daily_usd: float | None = None

    def __post_init__(self) -> None:
        for name, value in (
            ("OPENGROK_TEACHER_BUDGET_USD", self.run_usd),
            ("OPENGROK_TEACHER_DAILY_BUDGET_USD", self.daily_usd),
        ):
            if value is not None and not value > 0:
                raise ValueError(
                    f"{name}={value!r} is not a positive amount of USD: give e.g. 5 or 0.50, or unset it for no limit"
                )

    @property
    def limited(self) -> bool:
        return self.run_usd is not None or self.daily_usd is not None


def utc_day() -> str:
    return datetime.now(UTC).date().isoformat()


@dataclass
class Budget:
    """The budgets of one collection: ``run_id`` groups the runs one budget covers, ``partition`` labels spend."""

    store: ResponseStore
    limits: BudgetLimits
    run_id: str
    partition: str

    def reserve(self, prompt_id: str, worst_usd: float) -> int:
        """Reserve ``worst_usd`` for one request; raises :class:`BudgetExhausted` when it does not fit."""
        ticket = self.store.spend.reserve(
            utc_day(), self.run_id, self.partition, prompt_id, worst_usd, self.limits.run_usd, self.limits.daily_usd
        )
        if ticket is None:
            raise BudgetExhausted(self.describe_stop(worst_usd))
        return ticket

    async def admit(self, prompt_id: str, worst_usd: float) -> int:
        """:meth:`reserve` off the event loop (the commit waits for fsync)."""
        return await asyncio.to_thread(self.reserve, prompt_id, worst_usd)

    async def settle(self, ticket: int, actual_usd: float) -> None:
        await asyncio.to_thread(self.store.spend.settle, ticket, actual_usd)

    def remaining_today(self) -> float | None:
        if self.limits.daily_usd is None:
            return None
        return max(0.0, self.limits.daily_usd - self.store.spend.spent(day=utc_day()))

    def describe_stop(self, worst_usd: float) -> str:
        spent_run, spent_day = self.store.spend.spent(run_id=self.run_id), self.store.spend.spent(day=utc_day())
        parts = []
        if self.limits.run_usd is not None:
            parts.append(f"run budget OPENGROK_TEACHER_BUDGET_USD={self.limits.run_usd:g}, spent {spent_run:.6f}")
        if self.limits.daily_usd is not None:
            parts.append(
                f"daily budget OPENGROK_TEACHER_DAILY_BUDGET_USD={self.limits.daily_usd:g}, "
                f"spent {spent_day:.6f} today (UTC)"
            )
        return f"the next request's worst case (USD {worst_usd:.6f}) does not fit: {'; '.join(parts)}"
