"""``scripts/bench batch``: one file through the online route and through ``--batch-api``.

The same N lines, each route run as the real ``embed-file`` command against one stub API
process: online with one worker and the stub's per-call latency, then ``--batch-api`` with
the stub's batches completing after ``--batch-delay-s`` (0: at the first poll). Reports
lines per second of wall time (the whole command, minus the batch delay for the batch
route, so what remains is this client's own work once the batch completes: plan, upload,
poll, download, map, write) and the price of the file's tokens at each route's rate
(``EMBEDDINGS_PRICE_TABLE``). A last row runs 60,000 lines at the API's real limits: two
batches. Empties the Redis database it is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from bench.env import bench_env
from devstack import REPO_ROOT, StubProcess, WorkerProcess


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lines", type=int, default=5000, help="lines of the file (5000)")
    parser.add_argument(
        "--big-lines", type=int, default=60_000, help="the batch-only run (60000; 0 skips it)"
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="online call latency")
    parser.add_argument("--batch-delay-s", type=float, default=0.0, help="stub batch delay")
    parser.add_argument("--dimensions", type=int, default=256)
    parser.add_argument("--model", default="text-embedding-3-small")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    return parser.parse_args(argv)


def _texts(n: int) -> list[str]:
    return [
        f"backfill line {i}: the quick brown fox jumps over the lazy dog, variant {i % 97}"
        for i in range(n)
    ]


def _embed_file(
    env: dict[str, str], source: Path, output: Path, *extra: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    argv = [sys.executable, "-m", "producers.cli", str(source), "-o", str(output),
            "--no-progress", *extra]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"embed-file {' '.join(extra)} exited {done.returncode}:\n{done.stderr}")
    return elapsed, done


def _embedded(output: Path) -> int:
    return sum("embedding" in json.loads(line) for line in output.read_text().splitlines())


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ["REDIS_URL"] = args.redis_url  # before the Celery app is imported
    os.environ["STUB_API_BATCH_DELAY_S"] = str(args.batch_delay_s)  # read by the stub process
    from worker import app
    from worker.settings import Settings
    from worker.tokens import CL100K_BASE, token_counter

    prices = Settings.from_env({"EMBEDDINGS_MODEL": args.model}).prices_for(args.model)
    if prices is None:
        print(f"bench: {args.model} has no price in EMBEDDINGS_PRICE_TABLE", file=sys.stderr)
        return 2
    count = token_counter(CL100K_BASE)
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    stub = StubProcess(log_dir / "stub.log", latency_ms=args.latency_ms, dimensions=args.dimensions)
    rows = []
    try:
        stub.wait_ready()
        env = bench_env(args.redis_url, stub.base_url, args.dimensions,
                        EMBEDDINGS_MODEL=args.model, COLUMNS="120")  # fmt: skip
        texts = _texts(args.lines)
        tokens = sum(map(count, texts))
        source = log_dir / "file.txt"
        source.write_text("".join(text + "\n" for text in texts))

        print(f"bench: online, 1 worker, {args.lines} lines ...", file=sys.stderr, flush=True)
        worker = WorkerProcess(env, log_dir / "worker.log", "bench-batch")
        try:
            worker.wait_ready(app, timeout_s=60)
            elapsed, _ = _embed_file(env, source, log_dir / "online.jsonl")
        finally:
            worker.stop()
        calls = stub.stats()["ok_calls"]
        rows.append(("online, 1 worker", args.lines, f"{calls} calls", elapsed, 0.0, tokens,
                     tokens * prices[0] / 1e6, _embedded(log_dir / "online.jsonl")))  # fmt: skip

        runs = [("batch API", texts, tokens, source)]
        if args.big_lines:
            big = _texts(args.big_lines)
            big_source = log_dir / "big.txt"
            big_source.write_text("".join(text + "\n" for text in big))
            runs.append(("batch API, real limits", big, sum(map(count, big)), big_source))
        for label, run_texts, run_tokens, run_source in runs:
            print(f"bench: {label}, {len(run_texts)} lines ...", file=sys.stderr, flush=True)
            stub.reset()
            output = log_dir / f"{run_source.stem}.batch.jsonl"
            elapsed, _ = _embed_file(
                env, run_source, output, "--batch-api", "--poll-interval", "0.05"
            )
            if stub.stats()["calls"]:
                raise RuntimeError("the batch route made an online call")
            control = f"http://127.0.0.1:{stub.port}/_stub/batches"
            created = httpx.get(control).json()["batches_created"]
            rows.append((label, len(run_texts), f"{created} batches", elapsed,
                         args.batch_delay_s, run_tokens, run_tokens * prices[1] / 1e6,
                         _embedded(output)))  # fmt: skip
    finally:
        stub.stop()
        client.flushdb()
    print(
        f"\n{args.model} at ${prices[0]}/M tokens online, ${prices[1]}/M batch; stub "
        f"{args.latency_ms:.0f} ms per online call, batches complete after "
        f"{args.batch_delay_s:g} s; {args.dimensions} dimensions; {os.cpu_count()} CPUs, load "
        f"average {os.getloadavg()[0]:.1f} at the end. Wall time is the whole embed-file "
        f"command, start-up included. Logs in {log_dir}.\n"
    )
    print(
        "| route | lines | API work | wall s | lines/s (wall − batch delay) | "
        "tokens | price | embedded |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for label, lines, work, elapsed, delay, run_tokens, price, embedded in rows:
        rate = lines / max(elapsed - delay, 1e-9)
        print(
            f"| {label} | {lines:,} | {work} | {elapsed:.1f} | {rate:,.0f} | {run_tokens:,} | "
            f"${price:.4f} | {embedded:,} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
