"""The one way OpenGrok's in-process loopback servers run (the embedded teacher's logprobs front and the servers of
devtools/): their ASGI app under uvicorn, on a free loopback port, in a daemon thread, as a context manager."""

from __future__ import annotations

import threading
import time

import uvicorn


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
