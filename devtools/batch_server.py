"""An OpenAI-compatible Files + Batches server on loopback, for batch-collection tests.

No local server implements `/v1/batches` (`transformers serve` does not), and a real provider's batch takes
up to 24 hours, so this one keeps the protocol (upload a JSONL of chat-completion requests, create a batch
with metadata, poll it, list batches, download the output file) and finishes a batch ``processing_s`` after
it was created, answering each request deterministically from its custom_id and prompt. It logs every
upload and batch creation, which is what a resubmission test counts.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

import uvicorn

from opengrok_dagster.offline.server import free_loopback_port
from opengrok_dagster.offline.serving import ThreadedLoopbackServer, read_body


@dataclass
class BatchServerConfig:
    processing_s: float = 0.5  # a batch completes this long after creation
    completion_tokens: int = 16
    fail_custom_ids: frozenset[str] = frozenset()  # requests answered with a per-request error


@dataclass
class LoopbackBatchServer(ThreadedLoopbackServer):
    """Start with :meth:`start` (or as a context manager); ``uploads`` and ``created`` log what clients did."""

    NAME = "loopback batch server"

    config: BatchServerConfig = field(default_factory=BatchServerConfig)
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict] = field(default_factory=dict)
    uploads: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_loopback_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _app(self, scope, receive, send) -> None:
        body = await read_body(receive)
        method, path = scope["method"], scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            status, payload = self._route(method, path, headers, body)
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        kind = b"application/octet-stream" if isinstance(payload, bytes) else b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _route(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict | bytes]:
        if method == "POST" and path == "/v1/files":
            file_id = f"file-{uuid.uuid4().hex[:12]}"
            self.files[file_id] = _multipart_file(headers.get("content-type", ""), body)
            self.uploads.append(file_id)
            return 200, _file_object(file_id, len(self.files[file_id]), "batch")
        if method == "GET" and (match := re.fullmatch(r"/v1/files/([\w-]+)/content", path)):
            content = self.files.get(match.group(1))
            return (200, content) if content is not None else (404, {"error": {"message": "no such file"}})
        if method == "POST" and path == "/v1/batches":
            request = json.loads(body)
            if request.get("input_file_id") not in self.files:
                return 400, {"error": {"message": "input_file_id is not an uploaded file"}}
            batch_id = f"batch_{uuid.uuid4().hex[:12]}"
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": request["endpoint"],
                "errors": None,
                "input_file_id": request["input_file_id"],
                "completion_window": request["completion_window"],
                "status": "in_progress",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(time.time()),
                "metadata": request.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "_created": time.monotonic(),
            }
            self.created.append(batch_id)
            return 200, self._public(batch_id)
        if method == "GET" and path == "/v1/batches":
            return 200, {
                "object": "list",
                "data": [self._public(b) for b in reversed(self.created)],
                "has_more": False,
            }
        if method == "GET" and (match := re.fullmatch(r"/v1/batches/([\w-]+)", path)):
            return (
                (200, self._public(match.group(1)))
                if match.group(1) in self.batches
                else (404, {"error": {"message": "no such batch"}})
            )
        return 404, {"error": {"message": f"no route {method} {path}"}}

    def _public(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        if batch["status"] == "in_progress" and time.monotonic() - batch["_created"] >= self.config.processing_s:
            self._finish(batch)
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _finish(self, batch: dict) -> None:
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].decode().splitlines() if line.strip()]
        outputs, errors = [], []
        for line in lines:
            custom_id = line["custom_id"]
            if custom_id in self.config.fail_custom_ids:
                errors.append(
                    {
                        "id": f"batch_req_{custom_id}",
                        "custom_id": custom_id,
                        "response": None,
                        "error": {"code": "server_error", "message": "the request failed in the batch"},
                    }
                )
                continue
            user = next(m["content"] for m in reversed(line["body"]["messages"]) if m["role"] == "user")
            text = f"Answer to: {user[:40]} " + " ".join(["word"] * self.config.completion_tokens)
            completion = {
                "id": f"chatcmpl-{custom_id}",
                "object": "chat.completion",
                "model": line["body"]["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": self.config.completion_tokens},
            }
            outputs.append(
                {
                    "id": f"batch_req_{custom_id}",
                    "custom_id": custom_id,
                    "error": None,
                    "response": {"status_code": 200, "request_id": f"req-{custom_id}", "body": completion},
                }
            )
        for name, records in (("output_file_id", outputs), ("error_file_id", errors)):
            if records:
                file_id = f"file-{uuid.uuid4().hex[:12]}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in records).encode()
                batch[name] = file_id
        batch["status"] = "completed"
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs), "failed": len(errors)}


def _file_object(file_id: str, size: int, purpose: str) -> dict:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": "batch.jsonl",
        "purpose": purpose,
        "status": "processed",
    }


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The ``file`` part of a multipart/form-data upload (what the openai SDK sends to /v1/files)."""
    boundary = re.search(r"boundary=\"?([^\";]+)\"?", content_type)
    if not boundary:
        raise ValueError(f"not a multipart upload: {content_type!r}")
    for part in body.split(b"--" + boundary.group(1).encode()):
        head, _, content = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return content.removesuffix(b"\r\n")
    raise ValueError("the upload has no file part")
