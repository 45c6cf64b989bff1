"""``python -m bench.gateway``: the async producers' event-loop lag, and the gateway's cost.

(a) One event loop awaits ``--lag-texts`` texts at once through the async producers while a
ticker measures how late its 10 ms sleeps wake up: the loop's lag (target p99 < 50 ms).
(b) The same workers drain ``--texts`` texts, ``--concurrency`` at a time, first through the
async producers directly, then through ``embedding-gateway`` (a real uvicorn subprocess) as
one-text HTTP requests, and as requests of ``--batch`` texts (target: one-text requests at
≥ 0.8× the producers' texts/s). Prints a markdown table; see docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench.env import bench_env
from bench.loadgen import Connection
from bench.measure import cpu_seconds, percentile
from devstack import GatewayProcess, StubProcess, WorkerProcess

TICK_S = 0.01
BENCH_KEY = "bench-gateway-key-not-a-secret"
LAG_TARGET_MS = 50.0
RATIO_TARGET = 0.8
MODEL = "text-embedding-3-small"
SENTENCE = "the quick brown fox jumps over the lazy dog"


@dataclass
class Run:
    """One throughput run: texts/s, and CPU-seconds per 1,000 texts of each side."""

    label: str
    texts: int
    elapsed_s: float
    client_cpu_s: float
    gateway_cpu_s: float | None = None

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.elapsed_s


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--texts", type=int, default=3000, help="texts per throughput run")
    parser.add_argument("--lag-texts", type=int, default=1000, help="texts awaited at once")
    parser.add_argument("--concurrency", type=int, default=256, help="texts or requests in flight")
    parser.add_argument("--batch", type=int, default=16, help="texts per batched request")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub latency per call")
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    return parser.parse_args(argv)


def _env(redis_url: str, stub: StubProcess, dimensions: int) -> dict[str, str]:
    return bench_env(
        redis_url,
        stub.base_url,
        dimensions,
        GATEWAY_API_KEYS=BENCH_KEY,
        GATEWAY_REQUEST_TIMEOUT_S="300",
    )


async def _lag(lag_texts: int) -> tuple[list[float], float]:
    """Await ``lag_texts`` texts at once; return the ticker's lateness (ms) and the elapsed s."""
    from producers import AsyncProducer

    producer = AsyncProducer()
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(TICK_S)
            lags.append((loop.time() - before - TICK_S) * 1000)

    try:
        ticking = asyncio.create_task(ticker())
        texts = [f"lag probe {i}: {SENTENCE}" for i in range(lag_texts)]
        started = time.perf_counter()
        await asyncio.gather(*(producer.embed_text(t, timeout=300) for t in texts))
        elapsed = time.perf_counter() - started
        done.set()
        await ticking
    finally:
        await producer.aclose()
    return lags, elapsed


async def _bounded(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run ``one(i)`` for every i with at most ``concurrency`` in flight; elapsed seconds."""
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(concurrency, count))))
    return time.perf_counter() - started


async def _direct(texts: list[str], concurrency: int) -> float:
    from producers import AsyncProducer

    producer = AsyncProducer()
    try:

        async def one(i: int) -> None:
            await producer.embed_text(texts[i], timeout=300)

        return await _bounded(len(texts), concurrency, one)
    finally:
        await producer.aclose()


async def _through_gateway(
    gateway: GatewayProcess, texts: list[str], concurrency: int, batch: int
) -> float:
    """One kept-alive connection per lane, each sending its share of the requests."""
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    lanes = min(concurrency, len(chunks))
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    connections = [Connection("127.0.0.1", gateway.port, headers) for _ in range(lanes)]
    next_index = 0

    async def lane(connection: Connection) -> None:
        nonlocal next_index
        while next_index < len(chunks):
            chunk = chunks[next_index]
            next_index += 1
            # base64, as OpenAI's own clients ask for by default.
            body = {"input": chunk, "model": MODEL, "encoding_format": "base64"}
            status, answer = await connection.post("/v1/embeddings", body)
            if status != 200 or len(answer["data"]) != len(chunk):
                raise RuntimeError(f"gateway answered {status}: {answer}")

    started = time.perf_counter()
    try:
        await asyncio.gather(*(lane(c) for c in connections))
    finally:
        for connection in connections:
            await connection.close()
    return time.perf_counter() - started


def _measure(label: str, texts: list[str], run: Callable[[], Awaitable[float]],
             gateway: GatewayProcess | None = None) -> Run:  # fmt: skip
    print(f"bench.gateway: {label} ...", file=sys.stderr, flush=True)
    me = [os.getpid()]
    cpu_before = cpu_seconds(me)
    gateway_before = cpu_seconds([gateway.pid]) if gateway else 0.0
    elapsed = asyncio.run(run())
    result = Run(label, len(texts), elapsed, cpu_seconds(me) - cpu_before)
    if gateway is not None:
        result.gateway_cpu_s = cpu_seconds([gateway.pid]) - gateway_before
    return result


def _report(
    args: argparse.Namespace, lags: list[float], lag_elapsed: float, runs: list[Run]
) -> str:
    per_1k = 1000 / args.texts
    lines = [
        f"## Gateway benchmark {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{args.workers} worker process(es), stub API latency {args.latency_ms:.0f} ms per call, "
        f"{args.dimensions} dimensions; {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        f"(a) {args.lag_texts} texts awaited at once in one event loop: done in "
        f"{lag_elapsed:.2f} s; a 10 ms ticker woke late by p50 {percentile(lags, 50):.1f} ms, "
        f"p99 {percentile(lags, 99):.1f} ms, max {max(lags):.1f} ms ({len(lags)} ticks).",
        "",
        f"(b) {args.texts} texts, {args.concurrency} in flight (texts or requests):",
        "",
        "| path | texts/s | vs producers | client CPU-s/1k texts | gateway CPU-s/1k texts |",
        "|---|---:|---:|---:|---:|",
    ]
    base = runs[0].texts_per_s
    for run in runs:
        gateway_cpu = "—" if run.gateway_cpu_s is None else f"{run.gateway_cpu_s * per_1k:.2f}"
        lines.append(
            f"| {run.label} | {run.texts_per_s:,.1f} | {run.texts_per_s / base:.2f} | "
            f"{run.client_cpu_s * per_1k:.2f} | {gateway_cpu} |"
        )
    p99 = percentile(lags, 99)
    ratio = runs[1].texts_per_s / base
    lines += [
        "",
        "| target | wanted | measured | verdict |",
        "|---|---|---:|---|",
        f"| event-loop lag p99, {args.lag_texts} texts awaited | < {LAG_TARGET_MS:.0f} ms | "
        f"{p99:.1f} ms | {'met' if p99 < LAG_TARGET_MS else '**missed**'} |",
        f"| one-text requests through the gateway / producers | ≥ {RATIO_TARGET} | {ratio:.2f} | "
        f"{'met' if ratio >= RATIO_TARGET else '**missed**'} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # The project's Celery app reads REDIS_URL when first imported.
    os.environ["REDIS_URL"] = args.redis_url
    client = redis.Redis.from_url(args.redis_url)
    if client.llen("embeddings"):
        print(f"bench.gateway: the queue on {args.redis_url} is not empty", file=sys.stderr)
        return 2
    log_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    stub = StubProcess(log_dir / "stub.log", latency_ms=args.latency_ms, dimensions=args.dimensions)
    processes: list[StubProcess | WorkerProcess | GatewayProcess] = [stub]
    try:
        stub.wait_ready()
        env = _env(args.redis_url, stub, args.dimensions)
        from worker import app

        for i in range(args.workers):
            worker = WorkerProcess(env, log_dir / f"worker-{i}.log", "bench-gw", "INFO")
            processes.append(worker)
            worker.wait_ready(app, timeout_s=60)
        gateway = GatewayProcess(env, log_dir / "gateway.log")
        processes.append(gateway)
        gateway.wait_ready()

        print("bench.gateway: (a) event-loop lag ...", file=sys.stderr, flush=True)
        lags, lag_elapsed = asyncio.run(_lag(args.lag_texts))
        texts = [f"bench text {i}: {SENTENCE}" for i in range(args.texts)]
        # One warm-up pass through each path, so neither pays for first connections.
        asyncio.run(_direct(texts[:64], 64))
        asyncio.run(_through_gateway(gateway, texts[:64], 64, 1))
        runs = [
            _measure("async producers, one text per coroutine", texts,
                     lambda: _direct(texts, args.concurrency)),
            _measure("gateway, one text per request", texts,
                     lambda: _through_gateway(gateway, texts, args.concurrency, 1), gateway),
            _measure(f"gateway, {args.batch} texts per request", texts,
                     lambda: _through_gateway(gateway, texts, args.concurrency, args.batch),
                     gateway),
        ]  # fmt: skip
    finally:
        for process in reversed(processes):
            process.stop()
        client.close()
    print(_report(args, lags, lag_elapsed, runs))
    print(f"logs in {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
