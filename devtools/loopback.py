"""A small OpenAI-compatible chat server on loopback with fixed latency and injectable faults.

Used by the collection benchmark (a server of known latency gives the ideal throughput to compare with)
and by reliability tests: 429 with Retry-After, 500/503, malformed JSON, truncated bodies, connection
resets, stalls past the client's timeout and key checks, produced by a real HTTP server rather than a mock.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import uvicorn

from opengrok_dagster.offline.server import free_loopback_port
from opengrok_dagster.offline.serving import ThreadedLoopbackServer, read_body


FAULTS = ("429", "500", "503", "malformed_json", "truncated_body", "connection_reset", "stall")


@dataclass
class ReceivedRequest:
    at: float
    user_prompt: str
    fault: str | None
    authorization: str | None


@dataclass
class LoopbackConfig:
    latency_s: float = 0.0
    completion_tokens: int = 16
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    retry_after_s: float = 0.05
    stall_s: float = 5.0
    expected_api_key: str | None = None
    seed: int = 0
    returns_logprobs: bool = True  # False: ignore logprobs/top_logprobs, as `transformers serve` does


@dataclass
class LoopbackTeacher(ThreadedLoopbackServer):
    """Start with :meth:`start` (or as a context manager); ``requests`` logs every request received."""

    NAME = "loopback teacher"
    UVICORN_OPTIONS = {"timeout_keep_alive": 30}

    config: LoopbackConfig = field(default_factory=LoopbackConfig)
    requests: list[ReceivedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_loopback_port()
        self._rng = random.Random(self.config.seed)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def successful_prompts(self) -> list[str]:
        return [r.user_prompt for r in self.requests if r.fault is None]

    async def _app(self, scope, receive, send) -> None:
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if scope["path"] == "/health":
            return await _respond(send, 200, b'{"status":"ok"}')
        request = json.loads(body or b"{}")
        user_prompt = next((m["content"] for m in reversed(request.get("messages", [])) if m["role"] == "user"), "")
        authorization = headers.get("authorization")
        if self.config.expected_api_key and authorization != f"Bearer {self.config.expected_api_key}":
            self.requests.append(ReceivedRequest(time.monotonic(), user_prompt, "401", authorization))
            return await _respond(send, 401, b'{"error":{"message":"Incorrect API key provided"}}')
        fault = self._rng.choice(self.config.faults) if self._rng.random() < self.config.fault_rate else None
        self.requests.append(ReceivedRequest(time.monotonic(), user_prompt, fault, authorization))
        await asyncio.sleep(self.config.latency_s)
        if fault == "429":
            return await _respond(
                send, 429, b'{"error":"rate limited"}', [(b"retry-after", str(self.config.retry_after_s).encode())]
            )
        if fault in ("500", "503"):
            return await _respond(send, int(fault), b'{"error":"server error"}')
        if fault == "malformed_json":
            return await _respond(send, 200, b'{"choices": [{"message": ')
        if fault == "stall":
            await asyncio.sleep(self.config.stall_s)
        request_id = str(uuid.uuid4())
        text = " ".join(["word"] * self.config.completion_tokens)
        content = f"Answer to: {user_prompt[:40]} {text}"
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
        if request.get("logprobs") and self.config.returns_logprobs:
            choice["logprobs"] = {"content": chat_logprobs(content, int(request.get("top_logprobs") or 0))}
        payload = json.dumps(
            {
                "id": request_id,
                "object": "chat.completion",
                "model": request.get("model", "loopback"),
                "choices": [choice],
                "usage": {"prompt_tokens": len(user_prompt) // 4, "completion_tokens": self.config.completion_tokens},
            }
        ).encode()
        if fault in ("truncated_body", "connection_reset"):
            # Promise the whole body, send part of it, then fail the connection.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            raise ConnectionResetError("injected fault")
        await _respond(send, 200, payload, [(b"x-request-id", request_id.encode())])


def chat_logprobs(content: str, top_logprobs: int) -> list[dict]:
    """OpenAI's ``choices[0].logprobs.content`` for ``content``, one entry per whitespace-split token."""
    tokens = [token + " " for token in content.split(" ")]
    tokens[-1] = tokens[-1].rstrip()

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    def alternatives(token: str) -> list[dict]:
        return ([entry(token, -0.25)] + [entry(f"alt{k}", -1.0 - k) for k in range(1, top_logprobs)])[:top_logprobs]

    return [entry(token, -0.25) | {"top_logprobs": alternatives(token)} for token in tokens]


async def _respond(send, status: int, body: bytes, extra_headers: list | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Run a loopback teacher in its own process (benchmarks keep the server off the client's GIL)."""
    import argparse

    parser = argparse.ArgumentParser(description="OpenAI-compatible loopback teacher with fixed latency")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    teacher = LoopbackTeacher(LoopbackConfig(latency_s=args.latency))
    teacher.port = args.port
    uvicorn.run(
        teacher._app, host="127.0.0.1", port=args.port, log_level="critical", lifespan="off", interface="asgi3"
    )


if __name__ == "__main__":
    main()
