"""``scripts/bench limits``: 1 and 4 workers under one account limit that the stub enforces.

For each budget mode (none: each process backs off alone, as before the shared budget;
configured: ``EMBEDDINGS_RPM_LIMIT`` set to the stub's limit; learned: nothing set, the
budget learns from the API's headers and 429s) and each worker count, a backlog is enqueued
before timing starts and drained. Reports texts/s against the cap (calls/s × batch size),
429s, calls and texts per call. It empties the Redis database it is given (default 9).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from celery.result import ResultSet

from bench.env import bench_env
from devstack import StubProcess, WorkerProcess

MODES = ("none", "configured", "learned")
BATCH_SIZE = 8


@dataclass
class LimitRun:
    mode: str
    workers: int
    texts: int
    elapsed_s: float = 0.0
    calls: int = 0
    rate_limited: int = 0
    ok_calls: int = 0
    inputs: int = 0
    failed_texts: int = 0
    error: str = ""

    @property
    def texts_per_s(self) -> float:
        return (self.texts - self.failed_texts) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def per_call(self) -> float:
        return self.inputs / self.ok_calls if self.ok_calls else 0.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench limits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--texts", type=int, default=1200, help="backlog per run (1200)")
    parser.add_argument("--calls", type=int, default=30, help="calls allowed per window (30)")
    parser.add_argument("--window-s", type=float, default=6.0, help="the stub's window (6 s)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub latency (50 ms)")
    parser.add_argument("--workers", default="1,4", help="worker counts to run (1,4)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {','.join(MODES)}")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    return parser.parse_args(argv)


def _worker_env(redis_url: str, base_url: str, mode: str, rpm: int) -> dict[str, str]:
    if mode == "none":
        return bench_env(redis_url, base_url, 64, EMBEDDINGS_SHARED_BUDGET="0")
    if mode == "configured":
        return bench_env(redis_url, base_url, 64, EMBEDDINGS_RPM_LIMIT=str(rpm))
    return bench_env(redis_url, base_url, 64)


def _run(
    args: argparse.Namespace, stub: StubProcess, mode: str, count: int, log_dir: Path
) -> LimitRun:
    from producers import enqueue_texts
    from worker import app

    rpm = round(args.calls * 60 / args.window_s)
    run = LimitRun(mode, count, args.texts)
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    env = _worker_env(args.redis_url, stub.base_url, mode, rpm)
    workers = [
        WorkerProcess(env, log_dir / f"{mode}-{count}-{i}.log", f"limit-{mode}", "INFO")
        for i in range(count)
    ]
    try:
        for worker in workers:
            worker.wait_ready(app, timeout_s=60)
        texts = [f"limited text {mode} {count} {i}: lorem ipsum" for i in range(args.texts)]
        stub.reset()  # counters and the limit's window start now
        started = time.perf_counter()
        results = enqueue_texts(texts, app=app)
        outcomes = ResultSet(results, app=app).join_native(timeout=900, propagate=False)
        run.elapsed_s = time.perf_counter() - started
        run.failed_texts = sum(1 for o in outcomes if not isinstance(o, list))
        stats = stub.stats()
        run.calls, run.ok_calls = stats["calls"], stats["ok_calls"]
        run.rate_limited, run.inputs = stats["rate_limited_calls"], stats["total_inputs"]
    except Exception as exc:  # one failed run must not lose the others' numbers
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        for worker in workers:
            worker.stop()
        client.flushdb()
        client.close()
    return run


def _table(runs: list[LimitRun], cap: float, header: str) -> str:
    lines = [
        header,
        "",
        "| budget | workers | texts/s | × cap | calls | 429s | 429s / calls | texts per call "
        "| failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        share = r.rate_limited / r.calls if r.calls else 0.0
        lines.append(
            f"| {r.mode} | {r.workers} | {r.texts_per_s:.1f} | {r.texts_per_s / cap:.2f} | "
            f"{r.calls} | {r.rate_limited} | {share:.1%} | {r.per_call:.2f} | "
            f"{r.failed_texts}{' ' + r.error if r.error else ''} |"
        )
    by_key = {(r.mode, r.workers): r for r in runs}
    ratios = []
    for mode in MODES:
        one, four = by_key.get((mode, 1)), by_key.get((mode, 4))
        if one and four and one.texts_per_s:
            ratios.append(
                f"{mode}: 4 workers deliver {four.texts_per_s / one.texts_per_s:.2f} × one"
            )
    return "\n".join(lines + (["", *ratios] if ratios else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ["REDIS_URL"] = args.redis_url  # before the Celery app is imported
    log_dir = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    rpm = round(args.calls * 60 / args.window_s)
    stub = StubProcess(
        log_dir / "stub.log",
        latency_ms=args.latency_ms,
        dimensions=64,
        rpm=rpm,
        limit_window_s=args.window_s,
    )
    runs = []
    try:
        stub.wait_ready()
        for mode in args.modes.split(","):
            for count in (int(n) for n in args.workers.split(",")):
                print(f"bench: {mode} budget, {count} worker(s) ...", file=sys.stderr, flush=True)
                runs.append(_run(args, stub, mode, count, log_dir))
    finally:
        stub.stop()
    cap = args.calls / args.window_s * BATCH_SIZE
    header = (
        f"Stub limit: {args.calls} calls per {args.window_s:g} s window ({rpm} RPM), shared "
        f"by every worker; {args.latency_ms:.0f} ms per call; {args.texts} texts per run; "
        f"cap {cap:.0f} texts/s (calls/s × {BATCH_SIZE}); {os.cpu_count()} CPUs. "
        f"Worker logs in {log_dir}."
    )
    print(_table(runs, cap, header))
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
