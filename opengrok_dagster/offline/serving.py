"""The one way OpenGrok's in-process loopback servers run (the embedded teacher's fronts, the reference teacher and
the servers of devtools/): their ASGI app under uvicorn, on a free loopback port, in a daemon thread, as a context
manager; and how a front passes a request through to the server behind it."""

from __future__ import annotations

import json
import threading
import time

import httpx
import uvicorn


# Headers that belong to one hop (or to a body the front re-encodes), never copied across it.
_HOP_HEADERS = {b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}


async def read_body(receive) -> bytes:
    """The whole body of an ASGI HTTP request (it may arrive in several messages)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


class ThreadedLoopbackServer:
    """Base of the loopback servers: a subclass sets ``port``, ``_server = None`` and ``NAME``, and defines ``_app``."""

    NAME = "loopback server"
    UVICORN_OPTIONS: dict = {}

    def start(self):
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            lifespan="off",
            interface="asgi3",
            **self.UVICORN_OPTIONS,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the {self.NAME} did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def chat_request(scope, body: bytes) -> dict | None:
    """The JSON body of a chat-completions POST, else None (anything else is forwarded as it is)."""
    if scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
        return None
    try:
        request = json.loads(body)
    except ValueError:
        return None
    return request if isinstance(request, dict) and isinstance(request.get("messages"), list) else None


def forwarded_headers(headers) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in headers if bytes(k).lower() not in _HOP_HEADERS]


async def forward_request(upstream_root: str, scope, body: bytes, send) -> None:
    """Pass a request through to the server at ``upstream_root`` and stream its answer back as it comes."""
    query = scope["query_string"].decode()
    url = upstream_root + scope["path"] + (f"?{query}" if query else "")
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream(
            scope["method"], url, content=body, headers=forwarded_headers(scope["headers"])
        ) as answer:
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status_code,
                    "headers": forwarded_headers(answer.headers.raw),
                }
            )
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def respond_bytes(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_json(send, status: int, payload: dict, extra_headers: list | None = None) -> None:
    headers = [(b"content-type", b"application/json")] + (extra_headers or [])
    await respond_bytes(send, status, json.dumps(payload).encode(), headers)
