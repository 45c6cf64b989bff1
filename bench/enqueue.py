"""``scripts/bench enqueue``: how fast one producer thread feeds a fleet (issue 16).

Part 1, no workers: N texts enqueued from this thread by each path, against the bare rate
of one redis-py ``LPUSH`` per message-sized value (one round trip each): ``enqueue_text``
one at a time (``send_task``, what ``enqueue_texts`` did before), ``enqueue_texts`` (500
per ``MULTI``/``EXEC``, each chunk's results subscribed in one ``SUBSCRIBE``) and
``enqueue_ids`` (the same without subscriptions: what ``embed_texts`` and ``embed-file``
use). Wall rate and this process's CPU-seconds per 1,000 texts, the median of
``--repeats`` interleaved rounds. ``enqueue_texts`` is timed up to its return, while the
caller holds its results; dropping them unwaited (Celery unsubscribes each one) is timed
on its own row.

Part 2: ``embed-file``'s path (``producers.sliding.QueueStream``) with 1 and then 4 workers
against the stub at ``--latency-ms`` (300: API-bound), against four times one worker.
Empties the Redis database it is given (default 5).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from bench.env import bench_env
from devstack import StubProcess, WorkerProcess
from worker.names import INTERACTIVE_QUEUE

# The producers' default lane: where enqueue_text, enqueue_texts and enqueue_ids put texts.
QUEUE = INTERACTIVE_QUEUE


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench enqueue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--texts", type=int, default=5000, help="texts per enqueue run (5000)")
    parser.add_argument("--file-texts", type=int, default=6000, help="texts per fleet run (6000)")
    parser.add_argument("--latency-ms", type=float, default=300.0, help="stub latency (300)")
    parser.add_argument(
        "--window", type=int, default=2000, help="embed-file window (2000, its default)"
    )
    parser.add_argument("--workers", type=int, default=4, help="the fleet's size (4)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of part 1 (median)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    return parser.parse_args(argv)


def _texts(n: int, tag: str) -> list[str]:
    return [f"{tag} {i}: the quick brown fox jumps over the lazy dog {i % 97}" for i in range(n)]


def _timed(run: Callable[[], object], n: int) -> tuple[float, float, object]:
    """(texts/s, CPU-seconds per 1,000 texts, what ``run`` returned) of this process.

    What ``run`` returns is handed back, so releasing it (say, 5,000 ``AsyncResult``\\s,
    each unsubscribing as it goes) is not counted here: ``_released`` times that.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    returned = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu * 1000 / n, returned


def _released(returned: list[object], n: int) -> tuple[float, float]:
    """(texts/s, CPU-seconds per 1,000 texts) of dropping ``returned``'s items unwaited."""
    wall, cpu = time.perf_counter(), time.process_time()
    returned.clear()
    gc.collect()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu * 1000 / n


def _median(rows: list[tuple[float, float]]) -> tuple[float, float]:
    rates = sorted(rate for rate, _cpu in rows)
    cpus = sorted(cpu for _rate, cpu in rows)
    return rates[len(rates) // 2], cpus[len(cpus) // 2]


def _enqueue_rows(args: argparse.Namespace, client: redis.Redis) -> list[tuple[str, float, float]]:
    """Each path's median over ``--repeats`` rounds, the paths interleaved in every round.

    A shared machine's load changes from second to second; interleaving puts each path's
    runs next to the bare ``LPUSH`` runs they are compared with.
    """
    from producers import enqueue_text, enqueue_texts
    from producers.client import enqueue_ids
    from worker import app

    texts = _texts(args.texts, "enqueued")
    enqueue_texts(texts[:10], app=app)  # connections, declarations, imports
    sample = client.lindex(QUEUE, 0)
    if sample is None:
        raise SystemExit(f"bench: no message in {QUEUE} to time a bare LPUSH of")
    client.delete(QUEUE)
    one_by_one = texts[: max(1, len(texts) // 5)]  # 1.3 ms each: a fifth is enough
    labels = [
        "bare redis-py LPUSH, one round trip each",
        f"enqueue_text one at a time ({len(one_by_one)} texts; before)",
        "enqueue_texts (AsyncResults, one SUBSCRIBE per chunk)",
        f"… then dropping those {len(texts)} AsyncResults unwaited (one UNSUBSCRIBE each)",
        "enqueue_ids (embed_texts, embed-file)",
    ]
    runs: list[list[tuple[float, float]]] = [[] for _ in labels]

    def bare() -> None:
        for _ in texts:
            client.lpush("bench-bare-lpush", sample)

    for _ in range(args.repeats):
        rate, cpu, _ = _timed(bare, len(texts))
        runs[0].append((rate, cpu))
        client.delete("bench-bare-lpush")
        rate, cpu, _ = _timed(
            lambda: [enqueue_text(t, app=app) for t in one_by_one], len(one_by_one)
        )
        runs[1].append((rate, cpu))
        client.delete(QUEUE)
        rate, cpu, results = _timed(lambda: enqueue_texts(texts, app=app), len(texts))
        runs[2].append((rate, cpu))
        assert isinstance(results, list)
        runs[3].append(_released(results, len(texts)))
        client.delete(QUEUE)
        rate, cpu, _ = _timed(lambda: enqueue_ids(texts, app=app), len(texts))
        runs[4].append((rate, cpu))
        client.delete(QUEUE)
    return [(label, *_median(rows)) for label, rows in zip(labels, runs, strict=True)]


def _worker_env(args: argparse.Namespace, base_url: str) -> dict[str, str]:
    return bench_env(args.redis_url, base_url, 256)


def _fleet_run(
    args: argparse.Namespace, stub: StubProcess, count: int, log_dir: Path
) -> dict[str, float]:
    from producers.cli import embed_items, read_items
    from producers.sliding import QueueStats, QueueStream
    from worker import app

    source = log_dir / f"fleet-{count}.txt"
    source.write_text("\n".join(_texts(args.file_texts, f"fleet {count}")) + "\n")
    workers = [
        WorkerProcess(
            _worker_env(args, stub.base_url), log_dir / f"w{count}-{i}.log", "bench-fleet"
        )
        for i in range(count)
    ]
    try:
        for worker in workers:
            worker.wait_ready(app, timeout_s=60)
        stub.reset()
        stats = QueueStats()
        cpu = time.process_time()
        summary = embed_items(
            read_items(source, "lines", max_chars=10_000),
            io.StringIO(),
            QueueStream(app, stats=stats),
            skip=set(),
            window=args.window,
            timeout_s=600,
        )
        cpu = time.process_time() - cpu
    finally:
        for worker in workers:
            worker.stop()
    calls = stub.stats()["ok_calls"]
    return {
        "texts_per_s": summary.texts_per_s,
        "failed": summary.failed,
        "enqueue_per_s": stats.enqueue_per_s,
        "collect_per_s": stats.collect_per_s,
        "producer_cpu_per_1k": cpu * 1000 / max(summary.texts, 1),
        "texts_per_call": summary.ok / calls if calls else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ["REDIS_URL"] = args.redis_url  # before the Celery app is imported
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-enqueue-"))
    stub = StubProcess(log_dir / "stub.log", latency_ms=args.latency_ms, dimensions=256)
    try:
        print("bench: enqueue paths ...", file=sys.stderr, flush=True)
        rows = _enqueue_rows(args, client)
        stub.wait_ready()
        fleet = {}
        for count in (1, args.workers):
            print(f"bench: embed-file with {count} worker(s) ...", file=sys.stderr, flush=True)
            fleet[count] = _fleet_run(args, stub, count, log_dir)
            client.flushdb()
    finally:
        stub.stop()
        client.flushdb()
    bare = rows[0][1]
    print(
        f"One producer thread, Redis {args.redis_url}; {args.texts} texts per enqueue run, "
        f"median of {args.repeats} interleaved rounds; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the end. "
        f"Logs in {log_dir}.\n"
    )
    print("| enqueue path | texts/s | × bare LPUSH | producer CPU-s / 1k texts |")
    print("|---|---:|---:|---:|")
    for label, rate, cpu in rows:
        print(f"| {label} | {rate:,.0f} | {rate / bare:.2f} | {cpu:.3f} |")
    one = fleet[1]["texts_per_s"]
    print(
        f"\nembed-file path, {args.file_texts} texts, window {args.window}, stub "
        f"{args.latency_ms:.0f} ms per call, 256 dimensions.\n"
    )
    print(
        "| workers | texts/s | × (workers × one worker) | enqueued/s | collected/s "
        "| producer CPU-s / 1k texts | texts per call | failed |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count, run in fleet.items():
        print(
            f"| {count} | {run['texts_per_s']:.1f} | {run['texts_per_s'] / (count * one):.2f} | "
            f"{run['enqueue_per_s']:,.0f} | {run['collect_per_s']:.1f} | "
            f"{run['producer_cpu_per_1k']:.3f} | {run['texts_per_call']:.2f} | "
            f"{run['failed']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
