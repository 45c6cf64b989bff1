"""The main job, end to end: the stub API, Flower, a worker, and a producer embedding a file.

Run it through ``scripts/demo`` (which also sets up the venv and Redis). It prints a summary:
texts, API calls, texts per call, retries, failures, throughput, latency percentiles, and the
Flower and metrics URLs it used. Flower's login is ``FLOWER_BASIC_AUTH`` when set, else a
generated one that is printed. ``--keep-running`` leaves everything up to look around.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from devstack import REPO_ROOT, StubProcess, WorkerProcess, free_port, wait_for
from devstack.flower import FlowerProcess, flower_env
from producers import enqueue_text
from worker import app
from worker.errors import EmbeddingError

console = Console()


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _flower_login() -> tuple[str, bool]:
    """``FLOWER_BASIC_AUTH`` if set, else a fresh ``demo:<random>`` (True: print it)."""
    given = os.environ.get("FLOWER_BASIC_AUTH", "")
    if given:
        return given, False
    return f"demo:{secrets.token_urlsafe(12)}", True


def _scrape(url: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    text = httpx.get(url, timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def _flower_final_tasks(flower: FlowerProcess, ids: set[str]) -> int:
    """How many of ``ids`` Flower shows as finished, waiting briefly for its events."""

    def finished() -> int:
        tasks = flower.api("tasks")
        return sum(1 for i in ids if tasks.get(i, {}).get("state") in ("SUCCESS", "FAILURE"))

    # A count short of all is itself the finding, so a timeout is not an error here.
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: finished() == len(ids), 15, "Flower to see every task")
    return finished()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=REPO_ROOT / "samples" / "texts.txt")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub API latency per call")
    parser.add_argument("--limit", type=int, default=0, help="embed only the first N lines")
    parser.add_argument(
        "--keep-running", action="store_true", help="leave the stack up until Ctrl-C"
    )
    args = parser.parse_args(argv)

    run_dir = REPO_ROOT / ".run"
    texts = [line for line in args.file.read_text().splitlines() if line.strip()]
    if args.limit:
        texts = texts[: args.limit]

    stub = StubProcess(run_dir / "stub.log", latency_ms=args.latency_ms)
    stub.wait_ready()
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    env = dict(
        os.environ,
        EMBEDDINGS_BASE_URL=stub.base_url,
        EMBEDDINGS_API_KEY="sk-demo-key",
        EMBEDDINGS_METRICS_PORT=str(metrics_port),
        EMBEDDINGS_METRICS_ADDR="127.0.0.1",
    )
    login, generated = _flower_login()
    # Flower starts first so it sees every task's events; it never gets the API key.
    flower = FlowerProcess(flower_env(env), run_dir / "flower.log", login)
    worker = WorkerProcess(env, run_dir / "worker.log", name="demo", loglevel="WARNING")
    try:
        flower.wait_ready()
        worker.wait_ready(app)
        console.print(
            f"stub API {stub.base_url} ({args.latency_ms:.0f} ms per call); worker "
            f"{worker.hostname}; broker {app.conf.broker_url}; logs in {run_dir}/"
        )
        user = login.partition(":")[0]
        shown = login if generated else f"{user}:<FLOWER_BASIC_AUTH>"
        console.print(f"Flower {flower.url} (login {shown}); worker metrics {metrics_url}")
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
        flower_seen = _flower_final_tasks(flower, {r.id for _, r in enqueued})
        scraped = _scrape(metrics_url)
        if args.keep_running:
            console.print(f"still running: Flower {flower.url}, metrics {metrics_url}; Ctrl-C ends")
            try:
                while worker.alive():
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    finally:
        worker.stop()
        flower.stop()
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
    table.add_row("tasks finished in Flower", f"{flower_seen} of {len(enqueued)}")
    table.add_row(
        "API calls per worker metrics", f"{scraped.get('embeddings_success_total', 0):.0f}"
    )
    table.add_row("Flower URL", flower.url)
    table.add_row("metrics URL", metrics_url)
    console.print(table)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
