"""Batch collection through an OpenAI-compatible Files + Batches API (OpenAI, xAI): a partition's prompts go
up as one JSONL file, come back within the completion window at the provider's batch price, and are written
to the response store as ordinary responses.

Resumable without resubmitting: the submission (its token, prompts and budget reservations) is committed
before anything is uploaded, the token travels in the batch's metadata, and the batch id is committed as soon
as the provider returns it. A run killed at any point finds its batch again on the next run (by id, or by
listing batches and matching the token) and polls it instead of submitting a second one. Its prompts are
claimed for the completion window, so a concurrent online run does not send them too.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import httpx

from opengrok_dagster.collect.budget import Budget, BudgetExhausted
from opengrok_dagster.collect.client import (
    EndpointUnreachable,
    TeacherConfigurationError,
    TeacherEndpoint,
    characters_token_count,
)
from opengrok_dagster.collect.collector import CollectionSummary
from opengrok_dagster.collect.prompts import prompt_messages
from opengrok_dagster.collect.result import (
    Prices,
    SamplingParams,
    TeacherResult,
    UnreadableAnswer,
    result_from_payload,
)
from opengrok_dagster.collect.store import Claim, ResponseKey, ResponseStore
from opengrok_dagster.collect.teacher import BatchSettings, TeacherSpec
from opengrok_dagster.redact import redact_http_logs


SUBMISSION_METADATA = "opengrok_submission"
FINAL_STATES = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class PollClock:
    """How the poller waits and reads the time; a test passes its own, so no test sleeps through a poll."""

    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic


def _openai_client(endpoint: TeacherEndpoint):
    from openai import OpenAI

    redact_http_logs()  # the openai client logs each request's URL (credentials included) at DEBUG/INFO
    # The openai client appends paths to base_url as text: a gateway's query (?api_key=) travels as default_query.
    url = httpx.URL(endpoint.base_url)
    return OpenAI(
        base_url=str(url.copy_with(query=None)),
        default_query=dict(url.params.multi_items()) or None,
        api_key=endpoint.api_key or "not-needed",
        max_retries=5,
        timeout=120.0,
    )


def collect_batch(
    rows: Sequence[dict],
    teacher: TeacherSpec,
    store: ResponseStore,
    round_key: str,
    topic: str,
    budget: Budget | None = None,
    log: Callable[[str], None] = print,
    clock: PollClock = PollClock(),
    run_id: str | None = None,
) -> CollectionSummary:
    """Submit (or resume) this partition's batch, wait for it and record its results (with ``run_id``, the run
    that recorded them, and the batch's id: the spend report counts them as batch-priced)."""
    import openai

    # Long on purpose: it reads as the batch's life cycle (resume or submit, wait, record), and every step shares
    # the one submission record that makes a killed run resume instead of resubmitting.
    endpoint, sampling, settings = teacher.endpoint, teacher.sampling, teacher.batch
    key = ResponseKey(endpoint.model_label, sampling.key(), round_key)
    batch_prices = settings.prices(teacher.prices)
    answered = store.responses.answered(key, (row["prompt_id"] for row in rows))
    by_id = {row["prompt_id"]: row for row in rows}
    client = _openai_client(endpoint)
    submission = store.batches.open(key, topic)
    unsent, budget_stop = 0, None
    try:
        if submission is None:
            pending = [row for row in rows if row["prompt_id"] not in answered]
            if not pending:
                return CollectionSummary(len(rows), len(answered), 0, 0, 0)
            submission, unsent, budget_stop = _new_submission(
                pending, key, topic, store, settings, batch_prices, sampling, budget
            )
            if not submission["prompts"]:
                return CollectionSummary(len(rows), len(answered), 0, 0, 0, 0, unsent, budget_stop)
        else:
            log(
                f"resuming batch submission {submission['submission']} ({submission['batch_id'] or 'not yet created'})"
            )
        batch_id = submission["batch_id"] or _find_or_submit(
            client, submission, by_id, endpoint, sampling, settings, store, log
        )
        batch = _wait(client, batch_id, settings, log, clock)
        results = _results(client, batch, sampling, batch_prices, endpoint.model)
    except openai.APIConnectionError as exc:  # the openai client has retried already: the endpoint is not there
        if submission and not submission.get("batch_id"):
            _abandon(store, submission)
        raise EndpointUnreachable(
            f"cannot reach the teacher's Batch API at {endpoint.redacted_url} ({type(exc).__name__}: "
            f"{endpoint.redact(str(exc))}); check the base URL (scheme, host, port) and that the server or gateway "
            "is running"
        ) from None
    except (openai.NotFoundError, openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        if submission and not submission.get("batch_id"):  # nothing was submitted: give the prompts back
            _abandon(store, submission)
        raise TeacherConfigurationError(
            f"{endpoint.redacted_url} refused the Batch API ({type(exc).__name__}, HTTP {exc.status_code}): "
            "check the key, "
            "or collect online (OPENGROK_TEACHER_COLLECTION=online) from an endpoint without /v1/files and /v1/batches"
        ) from None
    owner = _owner(submission["submission"])
    succeeded = failed = 0
    for prompt_id, reservation in submission["prompts"].items():
        result = results.get(prompt_id) or _failure(
            f"batch {batch_id} ended {batch.status} without a result for this request"
        )
        store.responses.record(
            key,
            prompt_id,
            by_id[prompt_id]["topic"] if prompt_id in by_id else topic,
            result,
            owner,
            run_id=run_id,
            batch_id=batch_id,
        )
        if budget is not None and reservation is not None:
            store.spend.settle(reservation, result.cost_usd)
        succeeded, failed = (succeeded + 1, failed) if result.ok else (succeeded, failed + 1)
    store.batches.set_state(submission["submission"], "done")
    store.claims.release_all(owner)
    return CollectionSummary(
        len(rows), len(answered), len(submission["prompts"]), succeeded, failed, 0, unsent, budget_stop
    )


def _abandon(store: ResponseStore, submission: dict) -> None:
    if submission["prompts"]:
        store.batches.set_state(submission["submission"], "abandoned")
    for reservation in submission["prompts"].values():
        if reservation is not None:
            store.spend.settle(reservation, 0.0)
    store.claims.release_all(_owner(submission["submission"]))


def _owner(submission: str) -> str:
    return f"batch:{submission}"


def _new_submission(pending, key, topic, store, settings, batch_prices, sampling, budget):
    """Claim and (with a budget) reserve each prompt, then commit the submission before anything is sent."""
    token = uuid.uuid4().hex
    owner = _owner(token)
    lease_s = settings.max_wait_s
    chosen: dict[str, int | None] = {}
    unsent, budget_stop = 0, None
    for index, row in enumerate(pending):
        if store.claims.claim(key, row["prompt_id"], owner, lease_s) is not Claim.MINE:
            continue  # answered meanwhile, or another live run is sending it
        reservation = None
        if budget is not None:
            worst = batch_prices.cost(characters_token_count(prompt_messages(row)), sampling.max_tokens)
            try:
                reservation = budget.reserve(row["prompt_id"], worst)
            except BudgetExhausted as exc:  # this prompt and the rest stay missing for the next run
                store.claims.release(key, row["prompt_id"], owner)
                unsent, budget_stop = len(pending) - index, str(exc)
                break
        chosen[row["prompt_id"]] = reservation
    if chosen:
        store.batches.add(token, key, topic, chosen)
    return {"submission": token, "batch_id": None, "prompts": chosen}, unsent, budget_stop


def _find_or_submit(client, submission, by_id, endpoint, sampling, settings, store, log) -> str:
    token = submission["submission"]
    for batch in client.batches.list(limit=100):  # a run killed between create and commit left one behind
        if (batch.metadata or {}).get(SUBMISSION_METADATA) == token:
            log(f"found batch {batch.id} of submission {token}: polling it, not resubmitting")
            store.batches.set_state(token, "submitted", batch.id)
            return batch.id
    lines = [
        {
            "custom_id": prompt_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": endpoint.model,
                "messages": prompt_messages(by_id[prompt_id]),
                **sampling.request_fields(),
            },
        }
        for prompt_id in submission["prompts"]
    ]
    upload = client.files.create(
        file=("batch.jsonl", io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window=settings.completion_window,
        metadata={SUBMISSION_METADATA: token},
    )
    store.batches.set_state(token, "submitted", batch.id)
    log(f"submitted batch {batch.id}: {len(lines)} requests")
    return batch.id


def _wait(client, batch_id: str, settings: BatchSettings, log, clock: PollClock):
    """Poll every ``settings.poll_s`` until the batch reaches a final state (or ``max_wait_s`` has passed)."""
    deadline = clock.monotonic() + settings.max_wait_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL_STATES:
            return batch
        if clock.monotonic() > deadline:
            raise TimeoutError(
                f"batch {batch_id} is still {batch.status} after {settings.max_wait_s:.0f}s; rerun to keep polling it"
            )
        counts = batch.request_counts
        log(f"batch {batch_id} {batch.status}" + (f": {counts.completed}/{counts.total} done" if counts else ""))
        clock.sleep(settings.poll_s)


def _results(client, batch, sampling: SamplingParams, prices: Prices, model: str) -> dict[str, TeacherResult]:
    results: dict[str, TeacherResult] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        for line in client.files.content(file_id).text.splitlines():
            if line.strip():
                record = json.loads(line)
                results[record["custom_id"]] = _result(record, sampling, prices, model, batch.id)
    return results


def _result(record: dict, sampling: SamplingParams, prices: Prices, model: str, batch_id: str) -> TeacherResult:
    response = record.get("response") or {}
    status = response.get("status_code")
    if record.get("error") or status != 200:
        message = (record.get("error") or {}).get("message") or f"HTTP {status}"
        return replace(_failure(f"batch {batch_id}: {message}"), status_code=status)
    try:
        result = result_from_payload(response.get("body"), sampling, prices, model)
    except UnreadableAnswer as exc:
        return _failure(f"batch {batch_id}: unreadable response body ({exc})")
    result = replace(result, request_id=response.get("request_id") or result.request_id)
    if sampling.top_logprobs is not None and result.logprobs is None and result.text is not None:
        return replace(result, error="the endpoint returned no logprobs")
    return result


def _failure(error: str) -> TeacherResult:
    return TeacherResult(None, None, None, None, None, 0.0, 0.0, 1, None, error=error)
