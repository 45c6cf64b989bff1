"""``python -m bench``: every scenario in turn, then the table, the ratios and the plot.

(a) a plain task per text on prefork, (a') the same on threads, (b) this project with one
and with two worker processes, (c) the in-process EmbeddingBatcher with no queue. Each runs
against one stub API subprocess at a fixed latency; see docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench.measure import ScenarioResult
from devstack import REPO_ROOT, StubProcess

DEFAULT_OUT = REPO_ROOT / "bench" / "out"
SCENARIOS = ("a", "a_threads", "b1", "b2", "c")
QUICK_TEXTS = 64
QUICK_IDLE = 5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--texts", type=int, default=2000, help="backlog size (default 2000)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub latency per call")
    parser.add_argument("--idle-samples", type=int, default=30, help="one-at-a-time samples")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_TEXTS} texts, {QUICK_IDLE} idle samples",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results.md goes")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.idle_samples = min(args.texts, QUICK_TEXTS), QUICK_IDLE
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # Both Celery apps read REDIS_URL when first imported, so set it before importing them.
    os.environ["REDIS_URL"] = args.redis_url
    from bench.naive_tasks import NAIVE_QUEUE
    from bench.naive_tasks import app as naive_app
    from bench.report import Targets, markdown, plot
    from bench.scenarios import (
        BenchContext,
        naive_workers,
        project_workers,
        run_celery,
        run_inprocess,
        send_naive,
        warm_stub,
    )
    from producers import enqueue_text
    from worker import app as project_app
    from worker.runtime import get_settings

    client = redis.Redis.from_url(args.redis_url)
    queue = project_app.conf.task_default_queue
    if client.llen(queue):
        print(
            f"bench: queue {queue!r} on {args.redis_url} is not empty; use another database "
            "(--redis-url) or drain it first",
            file=sys.stderr,
        )
        return 2
    client.delete(NAIVE_QUEUE)  # only an aborted bench run leaves anything there
    client.close()

    settings = get_settings()
    concurrency = int(project_app.conf.worker_concurrency)
    texts = [
        f"bench text {i}: the quick brown fox jumps over the lazy dog {i % 97}"
        for i in range(args.texts)
    ]
    only = args.only.split(",")
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    stub = StubProcess(log_dir / "stub.log", latency_ms=args.latency_ms, dimensions=args.dimensions)
    results: dict[str, ScenarioResult] = {}
    try:
        stub.wait_ready()
        ctx = BenchContext(
            redis_url=args.redis_url,
            stub=stub,
            dimensions=args.dimensions,
            texts=texts,
            idle_samples=args.idle_samples,
            log_dir=log_dir,
            load_timeout_s=max(120.0, args.texts * args.latency_ms / 1000),
        )
        warm_stub(ctx)

        def announce(key: str, label: str) -> ScenarioResult:
            print(f"bench: running {label} ...", file=sys.stderr, flush=True)
            return ScenarioResult(key, label)

        if "a" in only:
            r = announce("a", "(a) naive, prefork ×2")
            results["a"] = run_celery(
                ctx,
                r,
                naive_app,
                lambda: naive_workers(ctx, "naive-prefork", ["--pool=prefork", "--concurrency=2"]),
                send_naive(naive_app),
            )
        if "a_threads" in only:
            r = announce("a_threads", f"(a′) naive, threads ×{concurrency}")
            results["a_threads"] = run_celery(
                ctx,
                r,
                naive_app,
                lambda: naive_workers(
                    ctx, "naive-threads", ["--pool=threads", f"--concurrency={concurrency}"]
                ),
                send_naive(naive_app),
            )
        for count in (1, 2):
            key = f"b{count}"
            if key in only:
                r = announce(key, f"(b) project, {count} worker{'s' if count > 1 else ''}")
                results[key] = run_celery(
                    ctx,
                    r,
                    project_app,
                    lambda n=count: project_workers(ctx, f"bench-b{n}", n),  # type: ignore[misc]
                    lambda text: enqueue_text(text, app=project_app),
                )
        if "c" in only:
            r = announce("c", f"(c) in-process EmbeddingBatcher, pool {settings.pool_size}")
            results["c"] = run_inprocess(ctx, r)
    finally:
        stub.stop()

    header = (
        f"## Benchmark run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"{args.texts} texts, stub API latency {args.latency_ms:.0f} ms per call, "
        f"{args.dimensions} dimensions; batch_size {settings.batch_size}, pool_size "
        f"{settings.pool_size}, flush_interval {settings.flush_interval_s * 1000:.0f} ms, "
        f"worker concurrency {concurrency}, prefetch multiplier "
        f"{project_app.conf.worker_prefetch_multiplier}; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. Latencies are enqueue → result in ms; idle is "
        f"{args.idle_samples} texts one at a time, load is the whole backlog enqueued at once."
    )
    targets = Targets(args.latency_ms, settings.flush_interval_s * 1000)
    report = markdown(results, targets, header)
    plot_note = plot(results, args.out / "throughput.png")
    report += f"\n{plot_note}; worker logs in {log_dir}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(report)
    print(report)
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
