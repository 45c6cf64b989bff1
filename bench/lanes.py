"""``scripts/bench lanes``: a web app's single texts while a backfill runs, with and without lanes.

For each worker count and budget, and each mode:

- ``lanes``: the web app's texts go to the interactive lane, the backfill (``embed-file``) to
  the bulk lane, workers at their defaults;
- ``one lane``: what there was before lanes: the web app's texts wait in the bulk lane with the
  backfill's (one queue, one micro-batcher order, one budget order), and workers reserve 8
  messages per thread (``CELERY_WORKER_PREFETCH_MULTIPLIER=8``, the old default).

it measures the backfill alone (lines/s), then the same backfill with one web text every
``--interval-s`` through ``producers.enqueue_text(text).get()`` (enqueue → vector, ms), and
then (without a budget) the same backfill once more with a wave of ``--gateway-concurrency``
one-text requests through ``embedding-gateway`` every 2 s. The waves get a backfill of their
own so that their CPU (64 requests at once on a small machine) does not count against the
backfill's rate with web texts.
The stub API enforces the budget's limit itself, shared by every worker. Timing is reported,
never asserted. It empties the Redis database it is given (default 9).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from bench.env import bench_env
from bench.measure import percentile
from devstack import GatewayProcess, StubProcess, WorkerProcess, wait_for
from worker.names import LANE_BULK, LANE_INTERACTIVE

MODES = ("lanes", "one lane")
DIMENSIONS = 64
GATEWAY_KEY = "sk-bench-lanes-gateway"
SENTENCE = "the quick brown fox jumps over the lazy dog while the backfill runs"


@dataclass
class LaneRun:
    """One (workers, budget, mode) cell of the table."""

    workers: int
    rpm: int
    mode: str
    lines: int
    solo_s: float = 0.0
    mixed_s: float = 0.0
    gateway_s: float = 0.0
    web_ms: list[float] = field(default_factory=list)
    gateway_ms: list[float] = field(default_factory=list)
    idle_ms: list[float] = field(default_factory=list)
    idle_gateway_ms: list[float] = field(default_factory=list)
    calls: int = 0
    inputs: int = 0
    rate_limited: int = 0
    error: str = ""

    @property
    def solo_rate(self) -> float:
        return self.lines / self.solo_s if self.solo_s else 0.0

    @property
    def mixed_rate(self) -> float:
        return self.lines / self.mixed_s if self.mixed_s else 0.0

    @property
    def gateway_rate(self) -> float:
        return self.lines / self.gateway_s if self.gateway_s else 0.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench lanes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lines", type=int, default=12_000, help="backfill without a budget")
    parser.add_argument("--budget-lines", type=int, default=4_000, help="backfill under --rpm")
    parser.add_argument("--rpm", type=int, default=600, help="the account's limit (600)")
    parser.add_argument("--budgets", default="none,rpm", help="none, rpm, or both (default)")
    parser.add_argument("--workers", default="1,4", help="worker counts (1,4)")
    parser.add_argument("--modes", default=",".join(MODES), help="lanes, one lane")
    parser.add_argument("--interval-s", type=float, default=0.5, help="between web texts")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub latency (50)")
    parser.add_argument("--idle-samples", type=int, default=20)
    parser.add_argument(
        "--gateway-concurrency", type=int, default=64,
        help="one-text requests per wave through the gateway (0: no gateway)",
    )  # fmt: skip
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    return parser.parse_args(argv)


def _lines_in(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


class Backfill:
    """``embed-file`` of ``lines`` generated lines in the bulk lane, as a real subprocess."""

    def __init__(self, env: dict[str, str], workdir: Path, lines: int, tag: str) -> None:
        self.source = workdir / f"backfill-{tag}.txt"
        self.output = workdir / f"backfill-{tag}.out.jsonl"
        self.source.write_text(
            "".join(f"backfill {tag} line {n}: {SENTENCE}\n" for n in range(lines))
        )
        self.output.unlink(missing_ok=True)
        self.lines = lines
        argv = [sys.executable, "-m", "producers.cli", str(self.source), "-o", str(self.output),
                "--no-progress", "--lane", LANE_BULK, "--timeout", "900"]  # fmt: skip
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    def done(self) -> bool:
        return self.process.poll() is not None

    def wait(self) -> float:
        """Seconds from start to exit; raises if any line failed."""
        _out, err = self.process.communicate(timeout=1800)
        elapsed = time.perf_counter() - self.started
        if self.process.returncode != 0:
            raise RuntimeError(f"embed-file exited {self.process.returncode}: {err[-2000:]}")
        return elapsed


def _web_text_ms(app: object, text: str, lane: str) -> float:
    from producers import enqueue_text

    started = time.perf_counter()
    enqueue_text(text, app=app, lane=lane).get(timeout=120)
    return (time.perf_counter() - started) * 1000


async def _gateway_wave(url: str, concurrency: int, lane: str, wave: int) -> list[float]:
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}", "X-Embeddings-Lane": lane}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:

        async def one(i: int) -> float:
            started = time.perf_counter()
            body = {"input": f"gateway wave {wave} text {i}", "model": "text-embedding-3-small"}
            answer = await client.post("/v1/embeddings", json=body, timeout=120)
            answer.raise_for_status()
            return (time.perf_counter() - started) * 1000

        return list(await asyncio.gather(*(one(i) for i in range(concurrency))))


def _waves_while(
    backfill: Backfill, gateway: GatewayProcess, args: argparse.Namespace, lane: str, run: LaneRun
) -> None:
    """A wave of one-text gateway requests every 2 s while the backfill runs."""
    wave = 0
    while not backfill.done():
        started = time.perf_counter()
        latencies = asyncio.run(_gateway_wave(gateway.url, args.gateway_concurrency, lane, wave))
        if not backfill.done():  # a wave that outlived the backfill measured an idle fleet
            run.gateway_ms.extend(latencies)
        wave += 1
        threading.Event().wait(max(0.0, 2.0 - (time.perf_counter() - started)))


def _run_cell(
    args: argparse.Namespace, stub: StubProcess, workers: int, rpm: int, mode: str, log_dir: Path
) -> LaneRun:
    from worker import app

    lines = args.budget_lines if rpm else args.lines
    run = LaneRun(workers, rpm, mode, lines)
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    extra = {"EMBEDDINGS_RPM_LIMIT": str(rpm)} if rpm else {}
    if mode == "one lane":
        extra["CELERY_WORKER_PREFETCH_MULTIPLIER"] = "8"
    env = bench_env(args.redis_url, stub.base_url, DIMENSIONS, **extra)
    web_lane = LANE_INTERACTIVE if mode == "lanes" else LANE_BULK
    tag = f"{workers}w-{rpm}-{mode.replace(' ', '')}"
    procs: list[WorkerProcess | GatewayProcess] = []
    try:
        for i in range(workers):
            worker = WorkerProcess(env, log_dir / f"worker-{tag}-{i}.log", "bench-lanes", "INFO")
            procs.append(worker)
        for worker in procs:
            worker.wait_ready(app, timeout_s=90)  # type: ignore[union-attr]
        if workers == 1 and not rpm:
            _web_text_ms(app, "warm-up", web_lane)
            for n in range(args.idle_samples):
                run.idle_ms.append(_web_text_ms(app, f"idle {tag} {n}", web_lane))

        print(f"bench lanes: {tag}: backfill alone ...", file=sys.stderr, flush=True)
        run.solo_s = Backfill(env, log_dir, lines, tag + "-solo").wait()
        client.flushdb()

        gateway = None
        if args.gateway_concurrency and not rpm:
            gateway = GatewayProcess({**env, "GATEWAY_API_KEYS": GATEWAY_KEY}, log_dir / "gw.log")
            procs.append(gateway)
            gateway.wait_ready()
            if workers == 1:
                # The same waves with no backfill: what a wave of this size costs anyway.
                for wave in range(3):
                    run.idle_gateway_ms += asyncio.run(
                        _gateway_wave(gateway.url, args.gateway_concurrency, web_lane, -1 - wave)
                    )
        print(f"bench lanes: {tag}: backfill with web texts ...", file=sys.stderr, flush=True)
        stub.reset()
        backfill = Backfill(env, log_dir, lines, tag + "-mixed")
        wait_for(lambda: _lines_in(backfill.output) >= lines // 20, 300, "the backfill to run")
        n = 0
        while not backfill.done():
            started = time.perf_counter()
            run.web_ms.append(_web_text_ms(app, f"web {tag} {n}", web_lane))
            n += 1
            threading.Event().wait(max(0.0, args.interval_s - (time.perf_counter() - started)))
        run.mixed_s = backfill.wait()
        stats = stub.stats()
        run.calls, run.inputs = stats["ok_calls"], stats["total_inputs"]
        run.rate_limited = stats["rate_limited_calls"]
        if gateway is not None:
            print(f"bench lanes: {tag}: backfill with gateway waves ...", file=sys.stderr)
            client.flushdb()
            backfill = Backfill(env, log_dir, lines, tag + "-gateway")
            wait_for(lambda: _lines_in(backfill.output) >= lines // 20, 300, "the backfill")
            _waves_while(backfill, gateway, args, web_lane, run)
            run.gateway_s = backfill.wait()
    except Exception as exc:  # one failed cell must not lose the others' numbers
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        for proc in procs:
            proc.stop()
        client.flushdb()
        client.close()
    return run


def _ms(samples: list[float], pct: float) -> str:
    return f"{percentile(samples, pct):,.0f}" if samples else "—"


def _table(runs: list[LaneRun], header: str) -> str:
    lines = [
        header,
        "",
        "| workers | budget | mode | backfill alone, lines/s | with web texts, lines/s | × alone "
        "| web text p50 ms | p95 ms | n | texts per call | 429s "
        "| with gateway waves, × alone | gateway p50 ms | p95 ms |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ratio = r.mixed_rate / r.solo_rate if r.solo_rate else 0.0
        gateway_ratio = "—"
        if r.gateway_s and r.solo_rate:
            gateway_ratio = f"{r.gateway_rate / r.solo_rate:.2f}"
        per_call = r.inputs / r.calls if r.calls else 0.0
        budget = f"{r.rpm} RPM" if r.rpm else "none"
        lines.append(
            f"| {r.workers} | {budget} | {r.mode} | {r.solo_rate:.1f} | {r.mixed_rate:.1f} | "
            f"{ratio:.2f} | {_ms(r.web_ms, 50)} | {_ms(r.web_ms, 95)} | {len(r.web_ms)} | "
            f"{per_call:.2f} | {r.rate_limited}{' ' + r.error if r.error else ''} | "
            f"{gateway_ratio} | {_ms(r.gateway_ms, 50)} | {_ms(r.gateway_ms, 95)} |"
        )
    idle = [r for r in runs if r.idle_ms]
    if idle:
        lines += ["", "Idle, one worker (no backfill):", ""]
        for r in idle:
            lines.append(
                f"- {r.mode}: one text at a time (enqueue → vector) p50 {_ms(r.idle_ms, 50)} ms, "
                f"p95 {_ms(r.idle_ms, 95)} ms ({len(r.idle_ms)} texts); a wave of one-text "
                f"gateway requests p50 {_ms(r.idle_gateway_ms, 50)} ms, "
                f"p95 {_ms(r.idle_gateway_ms, 95)} ms ({len(r.idle_gateway_ms)} requests)"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ["REDIS_URL"] = args.redis_url  # before the Celery app is imported
    log_dir = Path(tempfile.mkdtemp(prefix="bench-lanes-"))
    budgets = {"none": 0, "rpm": args.rpm}
    runs: list[LaneRun] = []
    for budget in args.budgets.split(","):
        rpm = budgets[budget]
        # The stub enforces the account's limit, over one-second windows, for every worker.
        stub = StubProcess(
            log_dir / f"stub-{budget}.log",
            latency_ms=args.latency_ms,
            dimensions=DIMENSIONS,
            rpm=rpm,
            limit_window_s=1.0,
        )
        try:
            stub.wait_ready()
            for workers in (int(n) for n in args.workers.split(",")):
                for mode in args.modes.split(","):
                    runs.append(_run_cell(args, stub, workers, rpm, mode, log_dir))
        finally:
            stub.stop()
    header = (
        f"Stub API {args.latency_ms:.0f} ms per call; backfill: embed-file of {args.lines:,} "
        f"lines ({args.budget_lines:,} under {args.rpm} RPM, EMBEDDINGS_RPM_LIMIT={args.rpm}, "
        f"the stub enforcing it for every worker); a web text every {args.interval_s:g} s "
        f"through producers.enqueue_text(t).get(); {os.cpu_count()} CPUs. Logs in {log_dir}."
    )
    print(_table(runs, header))
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
