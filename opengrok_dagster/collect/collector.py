"""Send every prompt that has no stored response yet, persisting each outcome as it arrives.

Exactly once across processes: before sending, a run claims the prompt in the response store (a lease with
owner and expiry, renewed by a heartbeat while the run lives). A prompt another live run has claimed is
waited for, then read from the store; a killed run's claims lapse after ``lease_s``, and whoever asks next
takes them over. The claim check, the answered check and the final record are each one transaction.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opengrok_dagster.collect.annotation import complete_prompt
from opengrok_dagster.collect.budget import BudgetExhausted
from opengrok_dagster.collect.client import LogprobsUnsupported, TeacherClient, TeacherConfigurationError
from opengrok_dagster.collect.result import TeacherResult
from opengrok_dagster.collect.store import Claim, ResponseKey, ResponseStore


@dataclass(frozen=True)
class CollectionSummary:
    prompts: int
    reused: int  # answered before this run started, or by a concurrent run meanwhile
    requested: int
    succeeded: int
    failed: int
    waited: int = 0  # prompts another run was sending when this one reached them
    unsent: int = 0  # prompts left missing because the budget was spent (the next run collects them)
    budget_stop: str | None = None  # why the budget stopped admitting, if it did


@dataclass(frozen=True)
class Leases:
    """How long a claim lasts without renewal, and how often a waiting run looks again."""

    lease_s: float = 60.0
    poll_s: float = 0.5

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 3


def claim_owner() -> str:
    """Who holds a claim: host, process and a random part (a process may run several collections)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def response_key(client: TeacherClient, round_key: str) -> ResponseKey:
    return ResponseKey(client.endpoint.model_label, client.sampling.key(), round_key)


async def collect_responses(
    prompts: Sequence[dict],
    client: TeacherClient,
    store: ResponseStore,
    round_key: str,
    on_result: Callable[[dict, TeacherResult], None] | None = None,
    leases: Leases = Leases(),
    run_id: str | None = None,
) -> CollectionSummary:
    """Request what is missing for ``round_key``; ``client`` must be entered (``async with``). Each response is
    stored with ``run_id`` (the run paying for it: the spend report groups by it).

    A 401/403/404 stops the whole collection with :class:`TeacherConfigurationError`; every response
    received before it is already committed, so the rerun after fixing the key requests only the rest.
    """
    # Long on purpose: the per-prompt coroutine, the heartbeat and the summary share the claim owner, the counts
    # and the budget stop; split apart, each piece would need all of them passed back and forth.
    key = response_key(client, round_key)
    owner = claim_owner()
    answered = store.responses.answered(key, (p["prompt_id"] for p in prompts))
    pending = [p for p in prompts if p["prompt_id"] not in answered]
    counts = {"requested": 0, "succeeded": 0, "failed": 0, "reused": len(answered), "waited": 0, "unsent": 0}
    budget_stop: list[str] = []  # set once: no request is admitted after the budget refused one
    # The claim-to-record span is what one request holds: no more claims than requests in flight.
    slots = asyncio.Semaphore(client.limits.max_concurrency)

    async def one(row: dict) -> None:
        waited = False
        while True:
            async with slots:
                if budget_stop:
                    counts["unsent"] += 1
                    return
                claim = await asyncio.to_thread(store.claims.claim, key, row["prompt_id"], owner, leases.lease_s)
                if claim is Claim.MINE:
                    try:
                        result = await complete_prompt(client, row)
                    except LogprobsUnsupported as exc:  # paid for: kept as an error row, then stop
                        await asyncio.to_thread(
                            store.responses.record,
                            key,
                            row["prompt_id"],
                            row["topic"],
                            exc.result,
                            owner,
                            run_id=run_id,
                        )
                        raise
                    except BudgetExhausted as exc:
                        budget_stop.append(str(exc))
                        counts["unsent"] += 1
                        await asyncio.to_thread(store.claims.release, key, row["prompt_id"], owner)
                        return
                    counts["requested"] += 1
                    # Off the event loop: the commit waits for fsync, and other responses keep arriving meanwhile.
                    await asyncio.to_thread(
                        store.responses.record, key, row["prompt_id"], row["topic"], result, owner, run_id=run_id
                    )
                    counts["succeeded" if result.ok else "failed"] += 1
                    if on_result:
                        on_result(row, result)
                    return
            if claim is Claim.ANSWERED:
                counts["reused"] += 1
                return
            if not waited:
                counts["waited"] += 1
                waited = True
            await asyncio.sleep(leases.poll_s)  # another live run is sending it: look again

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(leases.heartbeat_s)
            await asyncio.to_thread(store.claims.renew, owner, leases.lease_s)

    beating = asyncio.create_task(heartbeat())
    try:
        async with asyncio.TaskGroup() as group:
            for row in pending:
                group.create_task(one(row))
    except* TeacherConfigurationError as errors:
        raise errors.exceptions[0] from None
    finally:
        beating.cancel()
        await asyncio.to_thread(store.claims.release_all, owner)
    return CollectionSummary(
        len(prompts),
        counts["reused"],
        counts["requested"],
        counts["succeeded"],
        counts["failed"],
        counts["waited"],
        counts["unsent"],
        budget_stop[0] if budget_stop else None,
    )
