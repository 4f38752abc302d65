"""Run `transformers serve` on a free loopback port as the embedded OpenAI-compatible teacher."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


class TeacherServerError(RuntimeError):
    """The embedded teacher server did not come up."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL the server if the process that started it dies (even by SIGKILL): a graceful
    shutdown would first finish every in-flight generation, minutes on a busy CPU, for answers nobody reads."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


KV_BLOCK_TOKENS = 256


class TeacherServer:
    """A `transformers serve --continuous-batching` child process serving one local model.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``base_url`` ends in ``/v1``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        port: int | None = None,
        continuous_batching: bool = True,
        startup_timeout_s: float = 300.0,
        log_path: str | Path | None = None,
        kv_cache_tokens: int = 16384,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.port = port
        self.continuous_batching = continuous_batching
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.kv_cache_tokens = kv_cache_tokens
        self._process: subprocess.Popen | None = None

    @property
    def model_id(self) -> str:
        """The model name requests must carry: the server is pinned to this one model."""
        return str(self.model_dir)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> str:
        if self._process is not None:
            return self.base_url
        self.port = self.port or free_loopback_port()
        command = [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--device",
            "cpu",
        ]
        if self.continuous_batching:
            # Without an explicit size the paged KV cache claims a fraction of all memory (~9.5 GB seen on CPU);
            # 16k tokens hold 32 concurrent requests of prompt + 256 completion tokens.
            blocks = max(1, self.kv_cache_tokens // KV_BLOCK_TOKENS)
            command += [
                "--continuous-batching",
                "--cb-block-size",
                str(KV_BLOCK_TOKENS),
                "--cb-num-blocks",
                str(blocks),
            ]
        command.append(self.model_id)
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_until_ready(self) -> None:
        """Wait for /health, then send one tiny request so the model is loaded before real traffic."""
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self._process.poll() is not None:
                    raise TeacherServerError(
                        f"transformers serve exited with code {self._process.returncode} while starting on "
                        f"port {self.port}; see {self.log_path or 'its output (set log_path to keep it)'}"
                    )
                try:
                    if client.get(f"http://127.0.0.1:{self.port}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TeacherServerError(
                        f"transformers serve did not report healthy within {self.startup_timeout_s:.0f}s "
                        f"on port {self.port}"
                    )
                time.sleep(0.25)
            client.post(
                f"{self.base_url}/chat/completions",
                json={"model": self.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
                timeout=max(5.0, deadline - time.monotonic()),
            ).raise_for_status()

    def stop(self) -> None:
        """Stop the server we started (by its own PID): SIGTERM, then SIGKILL after 10 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> TeacherServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
