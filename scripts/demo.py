"""The main job, end to end: the stub API, a worker, and a producer embedding a sample file.

Run it through ``scripts/demo`` (which also sets up the venv and Redis). It prints a summary:
texts, API calls, texts per call, retries, failures, throughput and latency percentiles.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from devstack import REPO_ROOT, StubProcess, WorkerProcess
from producers import enqueue_text
from worker import app
from worker.errors import EmbeddingError

console = Console()


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=REPO_ROOT / "samples" / "texts.txt")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub API latency per call")
    parser.add_argument("--limit", type=int, default=0, help="embed only the first N lines")
    args = parser.parse_args(argv)

    run_dir = REPO_ROOT / ".run"
    texts = [line for line in args.file.read_text().splitlines() if line.strip()]
    if args.limit:
        texts = texts[: args.limit]

    stub = StubProcess(run_dir / "stub.log", latency_ms=args.latency_ms)
    stub.wait_ready()
    env = dict(os.environ, EMBEDDINGS_BASE_URL=stub.base_url, EMBEDDINGS_API_KEY="sk-demo-key")
    worker = WorkerProcess(env, run_dir / "worker.log", name="demo", loglevel="WARNING")
    try:
        worker.wait_ready(app)
        console.print(
            f"stub API {stub.base_url} ({args.latency_ms:.0f} ms per call); worker "
            f"{worker.hostname}; broker {app.conf.broker_url}; logs in {run_dir}/"
        )
        console.print(f"enqueueing {len(texts)} texts from {args.file} one task each...")
        started = time.time()
        enqueued = []
        for text in texts:
            enqueued.append((time.time(), enqueue_text(text)))
        failures = 0
        latencies_ms = []
        for sent_at, result in enqueued:
            try:
                result.get(timeout=300)
            except EmbeddingError as exc:
                failures += 1
                console.print(f"[red]failed[/red] {result.id}: {exc}")
            done = result.date_done
            if isinstance(done, datetime):
                done = done if done.tzinfo else done.replace(tzinfo=UTC)
                latencies_ms.append((done.timestamp() - sent_at) * 1000.0)
        finished = max(
            (r.date_done.replace(tzinfo=UTC).timestamp() for _, r in enqueued if r.date_done),
            default=time.time(),
        )
        stats = stub.stats()
    finally:
        worker.stop()
        stub.stop()

    elapsed = max(finished - started, 1e-9)
    calls = stats["ok_calls"]
    table = Table(title="embedding demo summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("texts", f"{len(texts)}")
    table.add_row("API calls", f"{calls}")
    table.add_row("texts per call", f"{stats['total_inputs'] / max(calls, 1):.2f}")
    table.add_row("retried API errors", f"{stats['failed_calls']}")
    table.add_row("failures", f"{failures}")
    table.add_row("throughput", f"{len(texts) / elapsed:.0f} texts/s")
    table.add_row("peak API concurrency", f"{stats['peak_concurrency']}")
    for q in (50, 95, 99):
        table.add_row(f"latency p{q} (enqueue→stored)", f"{_percentile(latencies_ms, q):.0f} ms")
    console.print(table)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
