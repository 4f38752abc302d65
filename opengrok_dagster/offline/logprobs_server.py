"""The embedded teacher with logprobs: an OpenAI-compatible front on loopback before `transformers serve`.

`transformers serve` ignores ``logprobs``/``top_logprobs`` (see :mod:`.logprobs`). This front forwards every
request to it unchanged, except a chat completion that asks for logprobs: that one is forwarded without the two
fields, and each answer comes back with ``choices[i].logprobs.content`` scored by :class:`.TeacherLogprobs` with
the same checkpoint (the model's temperature-1 distribution given the text, whatever the sampling). It runs only
when logprobs are asked for, so a run without them neither loads the second copy of the model nor pays the
scoring pass.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import uvicorn

from opengrok_dagster.collect.result import OPENAI_TOP_LOGPROBS_LIMIT
from opengrok_dagster.offline.logprobs import TeacherLogprobs
from opengrok_dagster.offline.server import TeacherServer, free_loopback_port
from opengrok_dagster.offline.serving import (
    ThreadedLoopbackServer,
    chat_request,
    forward_request,
    forwarded_headers,
    read_body,
    respond_bytes,
)


class LogprobsServer(ThreadedLoopbackServer):
    """Starts ``upstream`` and a front before it that adds logprobs; ``base_url`` (ending in /v1) is the front's.

    ``upstream`` is the :class:`~.server.TeacherServer` (any server with ``start``, ``stop`` and ``base_url`` when
    ``scorer`` is given); stopping the front stops it too. Scoring runs in one worker thread, one answer at a time: the forward
    pass uses every core already, and generation in the upstream process is what bounds throughput.
    """

    NAME = "embedded teacher's logprobs front"
    UVICORN_OPTIONS = {"timeout_keep_alive": 30}

    def __init__(self, upstream: TeacherServer, scorer: TeacherLogprobs | None = None) -> None:
        self.upstream = upstream
        self.scorer = scorer
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._scoring: ThreadPoolExecutor | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_id(self) -> str:
        return self.upstream.model_id

    @property
    def pid(self) -> int | None:
        """The PID of the `transformers serve` child."""
        return self.upstream.pid

    def start(self) -> LogprobsServer:
        if self._server is not None:
            return self
        self.upstream.start()
        try:
            if self.scorer is None:
                self.scorer = TeacherLogprobs.load(self.upstream.model_dir)
            self._scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-logprobs")
            self.port = self.port or free_loopback_port()
            super().start()
        except BaseException:
            self.upstream.stop()
            raise
        return self

    def stop(self) -> None:
        super().stop()
        if self._scoring is not None:
            self._scoring.shutdown(wait=False, cancel_futures=True)
        self._server, self._scoring = None, None
        self.upstream.stop()

    @property
    def _upstream_root(self) -> str:
        return self.upstream.base_url.rstrip("/").removesuffix("/v1")

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        request = chat_request(scope, body)
        if request is not None and request.get("logprobs"):
            return await self._chat_with_logprobs(scope, request, send)
        await forward_request(self._upstream_root, scope, body, send)

    async def _chat_with_logprobs(self, scope, request: dict, send) -> None:
        top_logprobs = request.get("top_logprobs") or 0
        if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= OPENAI_TOP_LOGPROBS_LIMIT:
            return await _error(send, 400, f"top_logprobs must be an integer from 0 to {OPENAI_TOP_LOGPROBS_LIMIT}")
        if request.get("stream"):
            return await _error(send, 400, "the embedded teacher returns logprobs only without stream")
        forwarded = {k: v for k, v in request.items() if k not in ("logprobs", "top_logprobs")}
        async with httpx.AsyncClient(timeout=None) as client:
            answer = await client.post(
                f"{self._upstream_root}{scope['path']}",
                content=json.dumps(forwarded).encode(),
                headers=forwarded_headers(scope["headers"]),
            )
        # httpx has decoded the body: its encoding header no longer applies.
        headers = [(k, v) for k, v in forwarded_headers(answer.headers.raw) if k.lower() != b"content-encoding"]
        try:
            payload = answer.json() if answer.status_code == 200 else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            return await respond_bytes(send, answer.status_code, answer.content, headers)
        loop = asyncio.get_running_loop()
        for choice in payload["choices"]:
            text = (choice.get("message") or {}).get("content") if isinstance(choice, dict) else None
            if isinstance(text, str):  # a refusal (content null) has no tokens to score
                content = await loop.run_in_executor(
                    self._scoring, self.scorer.content, request["messages"], text, top_logprobs
                )
                choice["logprobs"] = {"content": content}
        json_headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
        body = json.dumps(payload, ensure_ascii=False).encode()
        await respond_bytes(send, 200, body, json_headers + [(b"content-type", b"application/json")])


async def _error(send, status: int, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    await respond_bytes(send, status, body, [(b"content-type", b"application/json")])
