"""Send every prompt that has no stored response yet, persisting each outcome as it arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opengrok_dagster.collect.client import TeacherClient, TeacherConfigurationError, TeacherResult
from opengrok_dagster.collect.annotation import complete_prompt
from opengrok_dagster.collect.store import ResponseKey, ResponseStore


@dataclass(frozen=True)
class CollectionSummary:
    prompts: int
    reused: int
    requested: int
    succeeded: int
    failed: int


def response_key(client: TeacherClient, round_key: str) -> ResponseKey:
    return ResponseKey(client.endpoint.model_label, client.sampling.key(), round_key)


async def collect_responses(
    prompts: Sequence[dict],
    client: TeacherClient,
    store: ResponseStore,
    round_key: str,
    on_result: Callable[[dict, TeacherResult], None] | None = None,
) -> CollectionSummary:
    """Request what is missing for ``round_key``; ``client`` must be entered (``async with``).

    A 401/403/404 stops the whole collection with :class:`TeacherConfigurationError`; every response
    received before it is already committed, so the rerun after fixing the key requests only the rest.
    """
    key = response_key(client, round_key)
    answered = store.answered_prompt_ids(key, (p["prompt_id"] for p in prompts))
    pending = [p for p in prompts if p["prompt_id"] not in answered]
    succeeded = failed = 0

    async def one(row: dict) -> None:
        nonlocal succeeded, failed
        result = await complete_prompt(client, row)
        # Off the event loop: the commit waits for fsync, and other responses keep arriving meanwhile.
        await asyncio.to_thread(store.record, key, row["prompt_id"], row["topic"], result)
        succeeded, failed = (succeeded + 1, failed) if result.ok else (succeeded, failed + 1)
        if on_result:
            on_result(row, result)

    try:
        async with asyncio.TaskGroup() as group:
            for row in pending:
                group.create_task(one(row))
    except* TeacherConfigurationError as errors:
        raise errors.exceptions[0] from None
    return CollectionSummary(len(prompts), len(answered), len(pending), succeeded, failed)
