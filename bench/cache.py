"""``scripts/bench cache``: never paying twice, measured. Half the texts are repeats.

One worker with the vector cache on. Run 1 (cold): N texts, of which half repeat another
(shuffled), so the API should see only the distinct ones, through in-flight merging and the
cache. Run 2 (warm): the same N texts again, all served by the cache. Run 0: the same cold
workload with no cache, where only identical texts waiting together are merged. Reports
API inputs against distinct texts, and texts/s. Empties the databases it is given.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import redis
from celery.result import ResultSet

from bench.env import bench_env
from devstack import StubProcess, WorkerProcess


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--texts", type=int, default=4000, help="texts per run (4000)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub latency (50 ms)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/8")
    return parser.parse_args(argv)


def _env(args: argparse.Namespace, base_url: str, cache: bool) -> dict[str, str]:
    if cache:
        return bench_env(args.redis_url, base_url, 256, EMBEDDINGS_CACHE_URL=args.cache_url)
    return bench_env(args.redis_url, base_url, 256)


def _drain(texts: list[str], stub: StubProcess) -> tuple[float, int, int]:
    from producers import enqueue_texts
    from worker import app

    stub.reset()
    started = time.perf_counter()
    results = enqueue_texts(texts, app=app)
    ResultSet(results, app=app).join_native(timeout=600, propagate=True)
    elapsed = time.perf_counter() - started
    stats = stub.stats()
    for result in results:
        result.forget()
    return len(texts) / elapsed, stats["total_inputs"], stats["ok_calls"]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ["REDIS_URL"] = args.redis_url
    from worker import app

    distinct = [
        f"query {i}: how do I reset my password, variant {i % 17}" for i in range(args.texts // 2)
    ]
    texts = distinct * 2
    random.Random(7).shuffle(texts)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    broker, cache = redis.Redis.from_url(args.redis_url), redis.Redis.from_url(args.cache_url)
    stub = StubProcess(log_dir / "stub.log", latency_ms=args.latency_ms, dimensions=256)
    rows = []
    try:
        stub.wait_ready()
        for label, with_cache, runs in (
            ("no cache", False, ["cold"]),
            ("cache", True, ["cold", "warm"]),
        ):
            broker.flushdb()
            cache.flushdb()
            worker = WorkerProcess(
                _env(args, stub.base_url, with_cache), log_dir / f"{label}.log", "bench-cache"
            )
            try:
                worker.wait_ready(app, timeout_s=60)
                for run in runs:
                    rate, inputs, calls = _drain(texts, stub)
                    rows.append((label, run, rate, inputs, calls))
            finally:
                worker.stop()
    finally:
        stub.stop()
        broker.flushdb()
        cache.flushdb()
    print(
        f"{len(texts)} texts, {len(distinct)} distinct (50% repeats, shuffled); 1 worker; stub "
        f"{args.latency_ms:.0f} ms per call; {os.cpu_count()} CPUs.\n"
    )
    print("| setup | run | texts/s | API inputs | API calls | inputs / distinct texts |")
    print("|---|---|---:|---:|---:|---:|")
    for label, run, rate, inputs, calls in rows:
        print(
            f"| {label} | {run} | {rate:.1f} | {inputs} | {calls} | {inputs / len(distinct):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
