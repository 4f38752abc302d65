"""The embedded teacher with a reference annotator: label prompts answered by the reference teacher, the rest by
the embedded LLM, behind one OpenAI-compatible endpoint.

No strong LLM runs offline, and distilling the student's own checkpoint into itself (self-distillation) teaches it
nothing it did not know: the student's labels can only copy its base's. So by default (``TeacherResource.annotator``
= ``reference``) the embedded teacher answers the annotation prompts, which ask for a label of a real post, with the
reference teacher (:mod:`.reference_teacher`: TF-IDF + logistic regression fitted on the gold train splits, not an
LLM), a stand-in of known skill; the generative prompts of the grid still go to the embedded LLM. Its responses are
stored, priced ($0) and reported under a teacher name that says both (``TeacherResource.teacher_label``).
"""

from __future__ import annotations

import asyncio

import uvicorn

from opengrok_dagster.offline.logprobs_server import LogprobsServer
from opengrok_dagster.offline.reference_teacher import ReferenceTeacher
from opengrok_dagster.offline.server import TeacherServer, free_loopback_port
from opengrok_dagster.offline.serving import (
    ThreadedLoopbackServer,
    chat_request,
    forward_request,
    read_body,
    respond_json,
)


class AnnotatingFront(ThreadedLoopbackServer):
    """Starts ``upstream`` and a front before it that answers label prompts with ``annotator``; ``base_url`` (ending
    in /v1) is the front's; stopping the front stops the upstream too. Annotating runs in worker threads (the first
    prompt of a task fits its classifier, seconds to a minute), so generative requests pass through meanwhile."""

    NAME = "embedded teacher's annotating front"
    UVICORN_OPTIONS = {"timeout_keep_alive": 30}

    def __init__(self, upstream: TeacherServer | LogprobsServer, annotator: ReferenceTeacher) -> None:
        self.upstream = upstream
        self.annotator = annotator
        self.port: int | None = None
        self._server: uvicorn.Server | None = None

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

    def start(self) -> AnnotatingFront:
        if self._server is not None:
            return self
        self.upstream.start()
        try:
            self.port = self.port or free_loopback_port()
            super().start()
        except BaseException:
            self.upstream.stop()
            raise
        return self

    def stop(self) -> None:
        super().stop()
        self._server = None
        self.upstream.stop()

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        request = chat_request(scope, body)
        if request is not None and self.annotator.answers(request):
            status, payload = await asyncio.to_thread(self.annotator.respond, request)
            headers = [(b"x-request-id", payload["id"].encode())] if status == 200 else None
            return await respond_json(send, status, payload, headers)
        await forward_request(self.upstream.base_url.rstrip("/").removesuffix("/v1"), scope, body, send)
