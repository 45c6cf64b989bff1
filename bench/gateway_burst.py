"""``python -m bench.gateway_burst``: where a burst of one-text gateway requests spends its time.

One idle worker at its defaults, the stub at ``--latency-ms``, one gateway. Waves of
``--concurrency`` requests at once, each from a fresh ``httpx.AsyncClient`` (as
``scripts/bench lanes`` sends them) and over kept-alive connections, against two routes:
``GET /v1/models``, which answers from the gateway alone (the HTTP floor of client and
server on this machine), and ``POST /v1/embeddings`` with one text (the floor plus the
queue, the worker's calls and the wait). Timing is reported, never asserted. Empties the
Redis database it is given (default 3).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import redis

from bench.env import bench_env
from bench.measure import percentile
from devstack import GatewayProcess, StubProcess, WorkerProcess
from worker import app
from worker.celery_ext.config import apply_config, with_redis_url
from worker.settings import Settings

GATEWAY_KEY = "sk-bench-gateway-burst"
DIMENSIONS = 64


async def _wave(client: httpx.AsyncClient, concurrency: int, route: str, wave: int) -> list[float]:
    async def one(i: int) -> float:
        started = time.perf_counter()
        if route == "models":
            answer = await client.get("/v1/models")
        else:
            body = {"input": f"burst {wave} text {i}", "model": "text-embedding-3-small"}
            answer = await client.post("/v1/embeddings", json=body, timeout=120)
        answer.raise_for_status()
        return (time.perf_counter() - started) * 1000

    return list(await asyncio.gather(*(one(i) for i in range(concurrency))))


async def _waves(url: str, args: argparse.Namespace, route: str, fresh: bool) -> list[float]:
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    limits = httpx.Limits(max_connections=args.concurrency)
    latencies: list[float] = []
    kept = httpx.AsyncClient(base_url=url, headers=headers, limits=limits)
    async with kept:
        for wave in range(args.waves):
            if fresh:
                async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as c:
                    latencies += await _wave(c, args.concurrency, route, wave)
            else:
                latencies += await _wave(kept, args.concurrency, route, wave)
            await asyncio.sleep(args.pause_s)
    return latencies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_burst", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=64, help="requests per wave (64)")
    parser.add_argument("--waves", type=int, default=8, help="waves per row (8)")
    parser.add_argument("--pause-s", type=float, default=0.5, help="between waves (0.5)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub latency (50)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    args = parser.parse_args(argv)

    redis.Redis.from_url(args.redis_url).flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-gateway-burst-"))
    stub = StubProcess(log_dir / "stub.log", latency_ms=args.latency_ms, dimensions=DIMENSIONS)
    procs: list[StubProcess | WorkerProcess | GatewayProcess] = [stub]
    try:
        stub.wait_ready()
        env = bench_env(args.redis_url, stub.base_url, DIMENSIONS)
        worker = WorkerProcess(env, log_dir / "worker.log", "burst")
        procs.append(worker)
        apply_config(app, with_redis_url(Settings.from_env(env), args.redis_url))
        worker.wait_ready(app)
        gateway = GatewayProcess({**env, "GATEWAY_API_KEYS": GATEWAY_KEY}, log_dir / "gw.log")
        procs.append(gateway)
        gateway.wait_ready()
        print(
            f"{args.concurrency} requests at once, {args.waves} waves each, stub at "
            f"{args.latency_ms:g} ms, one idle worker at its defaults; logs in {log_dir}"
        )
        print("| route | connections | p50 ms | p95 ms |")
        print("|---|---|---:|---:|")
        for route in ("models", "embeddings"):
            for fresh in (True, False):
                latencies = asyncio.run(_waves(gateway.url, args, route, fresh))
                label = "fresh client per wave" if fresh else "kept alive"
                print(
                    f"| {route} | {label} | {percentile(latencies, 50):,.0f} | "
                    f"{percentile(latencies, 95):,.0f} |"
                )
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    main()
