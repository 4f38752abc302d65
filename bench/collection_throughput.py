"""Collection throughput: the teacher client + response store against a server of known latency.

Ideal throughput is min(concurrency / latency, rate limit); the ratio shows what the client's own
overhead (retry wrapper, rate limiter, per-response SQLite commit) costs. A second table measures the
embedded `transformers serve` teacher at the same concurrency levels (completion tokens/s).

    .venv/bin/python -m bench.collection_throughput            # both tables
    .venv/bin/python -m bench.collection_throughput --skip-embedded
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.measure import spread
from opengrok_dagster.collect.client import ClientLimits, TeacherClient, TeacherEndpoint
from opengrok_dagster.collect.collector import collect_responses
from opengrok_dagster.collect.result import SamplingParams
from opengrok_dagster.collect.store import ResponseStore
from opengrok_dagster.offline.server import free_loopback_port


@contextmanager
def loopback_server(latency_s: float):
    """The loopback teacher in its own process, so the server does not compete with the client for the GIL."""
    port = free_loopback_port()
    # devtools/ is not installed: run it from the repository root.
    process = subprocess.Popen(
        [sys.executable, "-m", "devtools.loopback", "--port", str(port), "--latency", str(latency_s)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait()


def synthetic_prompts(n: int, tag: str) -> list[dict]:
    return [
        {
            "prompt_id": f"{tag}-{i}",
            "topic": "bench",
            "system_prompt": "You are terse.",
            "prompt": f"Post {i} about {tag}?",
        }
        for i in range(n)
    ]


def timed_collection(
    base_url: str, model: str, n: int, limits: ClientLimits, sampling: SamplingParams, tag: str
) -> tuple[float, int]:
    """Seconds to collect ``n`` fresh prompts into a fresh store, and completion tokens received."""
    tokens = 0

    def count(row, result):
        nonlocal tokens
        tokens += result.completion_tokens or 0

    async def run() -> float:
        with tempfile.TemporaryDirectory() as scratch:
            store = ResponseStore(Path(scratch) / "bench.sqlite")
            async with TeacherClient(TeacherEndpoint(base_url, model), sampling, limits) as client:
                started = time.perf_counter()
                summary = await collect_responses(synthetic_prompts(n, tag), client, store, "bench", count)
                elapsed = time.perf_counter() - started
            assert summary.succeeded == n, summary
            return elapsed

    return asyncio.run(run()), tokens


def loopback_table(latency_s: float, repeats: int) -> list[str]:
    cases = [(1, None), (8, None), (32, None), (32, 1200.0)]
    lines = [
        "| concurrency | RPM limit | requests | ideal req/s | achieved req/s (median, min-max) | ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    with loopback_server(latency_s) as base_url:
        for concurrency, rpm in cases:
            ideal = min(concurrency / latency_s, rpm / 60 if rpm else float("inf"))
            n = int(ideal * 20)  # ~20 s of work: long enough that the limiter's one-second burst is noise
            rates = []
            for repeat in range(repeats):
                limits = ClientLimits(max_concurrency=concurrency, requests_per_minute=rpm)
                elapsed, _ = timed_collection(
                    base_url, "loopback", n, limits, SamplingParams(), f"c{concurrency}-{rpm}-{repeat}"
                )
                rates.append(n / elapsed)
            lines.append(
                f"| {concurrency} | {int(rpm) if rpm else '-'} | {n} | {ideal:.1f} | {spread(rates, 1)} | {statistics.median(rates) / ideal:.3f} |"
            )
    return lines


def embedded_table(requests_per_level: int, max_tokens: int, repeats: int) -> list[str]:
    from opengrok_dagster.offline.server import TeacherServer
    from opengrok_dagster.offline_model import check_offline_model, offline_model_dir

    lines = [
        "| concurrency | requests | max_tokens | completion tok/s, median (min-max) | req/s, median (min-max) |",
        "|---:|---:|---:|---:|---:|",
    ]
    with TeacherServer(check_offline_model(offline_model_dir())) as server:
        for concurrency in (1, 8, 32):
            n = max(concurrency, requests_per_level if concurrency > 1 else 4)
            token_rates, request_rates = [], []
            for repeat in range(repeats):
                elapsed, tokens = timed_collection(
                    server.base_url,
                    server.model_id,
                    n,
                    ClientLimits(max_concurrency=concurrency),
                    SamplingParams(max_tokens=max_tokens, temperature=0.7),
                    f"embedded-{concurrency}-{repeat}",
                )
                token_rates.append(tokens / elapsed)
                request_rates.append(n / elapsed)
            lines.append(
                f"| {concurrency} | {n} | {max_tokens} | {spread(token_rates, 1)} | {spread(request_rates, 2)} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1, help="loopback server latency in seconds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--embedded-requests", type=int, default=32)
    parser.add_argument("--embedded-max-tokens", type=int, default=64)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}\n")
    print(f"Loopback teacher, fixed latency {args.latency * 1000:.0f} ms, median of {args.repeats}:\n")
    print("\n".join(loopback_table(args.latency, args.repeats)))
    if not args.skip_embedded:
        print("\nEmbedded teacher (transformers serve --continuous-batching, SmolLM2-135M fp32, CPU):\n")
        print("\n".join(embedded_table(args.embedded_requests, args.embedded_max_tokens, args.repeats)))


if __name__ == "__main__":
    main()
