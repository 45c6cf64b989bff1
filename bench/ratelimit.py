"""``scripts/bench limits``: 1 and 4 workers under one account limit that the stub enforces.

For each budget mode (none: each process backs off alone, as before the shared budget;
configured: ``EMBEDDINGS_RPM_LIMIT`` set to the stub's limit; learned: nothing set, the
budget learns from the API's headers and 429s) and each worker count, a backlog is enqueued
before timing starts and drained. Reports texts/s against the cap (calls/s × batch size),
429s, calls and texts per call. It empties the Redis database it is given (default 9).

``--tokens``: a token-bound account instead (issue #23). The stub counts cl100k_base tokens
and allows ``--tpm`` (96,000: 1,600 a second) with no request limit; 2 workers embed the
lines of samples/texts.txt in the configured (``EMBEDDINGS_TPM_LIMIT`` set) and learned
modes. Reports texts/s and tokens/s against the token cap, and 429s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from celery.result import ResultSet

from bench.env import bench_env
from devstack import REPO_ROOT, StubProcess, WorkerProcess
from worker.tokens import CL100K_BASE, token_counter

MODES = ("none", "configured", "learned")
BATCH_SIZE = 8
# --tokens: issue #23's token-bound account, the stub enforcing it per one-second window.
TOKEN_MODES = ("configured", "learned")
BENCH_WORKERS_FOR_TOKENS = "2"  # the fleet: two worker processes
DEFAULT_TPM = 96_000
SAMPLES = REPO_ROOT / "samples" / "texts.txt"


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
    tokens: int = 0  # cl100k_base tokens of the texts embedded
    steady_texts_per_s: float = 0.0  # while the 10th to the 90th percent of texts were served
    error: str = ""

    @property
    def texts_per_s(self) -> float:
        return (self.texts - self.failed_texts) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def per_call(self) -> float:
        return self.inputs / self.ok_calls if self.ok_calls else 0.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench limits",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--tokens",
        action="store_true",
        help="a token-bound account: the stub allows --tpm cl100k_base tokens and any number "
        "of requests; 2 workers, samples/texts.txt, configured and learned modes",
    )
    parser.add_argument(
        "--tpm", type=int, default=DEFAULT_TPM, help=f"with --tokens (default {DEFAULT_TPM})"
    )
    parser.add_argument("--texts", type=int, default=1200, help="backlog per run (1200)")
    parser.add_argument("--calls", type=int, default=30, help="calls allowed per window (30)")
    parser.add_argument("--window-s", type=float, default=6.0, help="the stub's window (6 s)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="stub latency (50 ms)")
    parser.add_argument("--workers", help="worker counts to run (1,4; --tokens: 2)")
    parser.add_argument(
        "--modes", help=f"of {','.join(MODES)} (all; --tokens: {','.join(TOKEN_MODES)})"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args(argv)
    args.workers = args.workers or (BENCH_WORKERS_FOR_TOKENS if args.tokens else "1,4")
    args.modes = args.modes or ",".join(TOKEN_MODES if args.tokens else MODES)
    return args


def _worker_env(redis_url: str, base_url: str, mode: str, rpm: int, tpm: int = 0) -> dict[str, str]:
    if mode == "none":
        return bench_env(redis_url, base_url, 64, EMBEDDINGS_SHARED_BUDGET="0")
    if mode == "configured" and tpm:
        return bench_env(redis_url, base_url, 64, EMBEDDINGS_TPM_LIMIT=str(tpm))
    if mode == "configured":
        return bench_env(redis_url, base_url, 64, EMBEDDINGS_RPM_LIMIT=str(rpm))
    return bench_env(redis_url, base_url, 64)


def _texts(args: argparse.Namespace, mode: str, count: int) -> list[str]:
    if args.tokens:
        return SAMPLES.read_text(encoding="utf-8").splitlines()
    return [f"limited text {mode} {count} {i}: lorem ipsum" for i in range(args.texts)]


def _run(
    args: argparse.Namespace, stub: StubProcess, mode: str, count: int, log_dir: Path
) -> LimitRun:
    from producers import enqueue_texts
    from worker import app

    rpm = round(args.calls * 60 / args.window_s)
    texts = _texts(args, mode, count)
    run = LimitRun(mode, count, len(texts))
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    env = _worker_env(args.redis_url, stub.base_url, mode, rpm, args.tpm if args.tokens else 0)
    workers = [
        WorkerProcess(env, log_dir / f"{mode}-{count}-{i}.log", f"limit-{mode}", "INFO")
        for i in range(count)
    ]
    try:
        for worker in workers:
            worker.wait_ready(app, timeout_s=60)
        stub.reset()  # counters and the limit's window start now
        started = time.perf_counter()
        served = _Served(stub, started) if args.tokens else None
        try:
            results = enqueue_texts(texts, app=app)
            outcomes = ResultSet(results, app=app).join_native(timeout=900, propagate=False)
            run.elapsed_s = time.perf_counter() - started
        finally:
            if served is not None:
                run.steady_texts_per_s = served.stop(len(texts))
        run.failed_texts = sum(1 for o in outcomes if not isinstance(o, list))
        count_text = token_counter(CL100K_BASE)  # as the stub counts them
        embedded = (t for t, o in zip(texts, outcomes, strict=True) if isinstance(o, list))
        run.tokens = sum(map(count_text, embedded))
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


class _Served:
    """Samples the stub's served inputs every 0.1 s, for the rate between the 10th and the
    90th percent of a run's texts: the limit's pace without the workers' start and the tail."""

    def __init__(self, stub: StubProcess, started: float) -> None:
        self._stub, self._started = stub, started
        self._samples: list[tuple[float, int]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            inputs = self._stub.stats()["total_inputs"]
            self._samples.append((time.perf_counter() - self._started, inputs))

    def stop(self, texts: int) -> float:
        self._done.set()
        self._thread.join()
        low = next((s for s in self._samples if s[1] >= texts * 0.1), None)
        high = next((s for s in self._samples if s[1] >= texts * 0.9), None)
        if low is None or high is None or high[0] <= low[0]:
            return 0.0
        return (high[1] - low[1]) / (high[0] - low[0])


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


def _token_table(runs: list[LimitRun], cap: float, header: str) -> str:
    lines = [
        header,
        "",
        "| budget | workers | texts/s | tokens/s | × token cap | × cap, 10–90 % of texts "
        "| calls | 429s | 429s / calls | texts per call | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        share = r.rate_limited / r.calls if r.calls else 0.0
        per_text = r.tokens / (r.texts - r.failed_texts) if r.texts > r.failed_texts else 0.0
        steady = r.steady_texts_per_s * per_text / cap
        lines.append(
            f"| {r.mode} | {r.workers} | {r.texts_per_s:.1f} | {r.tokens_per_s:.0f} | "
            f"{r.tokens_per_s / cap:.2f} | {steady:.2f} | {r.calls} | {r.rate_limited} | "
            f"{share:.1%} | {r.per_call:.2f} | {r.failed_texts}"
            f"{' ' + r.error if r.error else ''} |"
        )
    return "\n".join(lines) + "\n"


def _stub(args: argparse.Namespace, log_dir: Path) -> StubProcess:
    if args.tokens:
        # One-second windows, as OpenAI quantizes a per-minute limit, and no request limit.
        return StubProcess(
            log_dir / "stub.log", latency_ms=args.latency_ms, dimensions=64, tpm=args.tpm
        )
    return StubProcess(
        log_dir / "stub.log",
        latency_ms=args.latency_ms,
        dimensions=64,
        rpm=round(args.calls * 60 / args.window_s),
        limit_window_s=args.window_s,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ["REDIS_URL"] = args.redis_url  # before the Celery app is imported
    log_dir = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    rpm = round(args.calls * 60 / args.window_s)
    stub = _stub(args, log_dir)
    runs = []
    try:
        stub.wait_ready()
        for mode in args.modes.split(","):
            for count in (int(n) for n in args.workers.split(",")):
                print(f"bench: {mode} budget, {count} worker(s) ...", file=sys.stderr, flush=True)
                runs.append(_run(args, stub, mode, count, log_dir))
    finally:
        stub.stop()
    if args.tokens:
        texts = _texts(args, "", 0)
        tokens = sum(map(token_counter(CL100K_BASE), texts))
        token_cap = args.tpm / 60
        header = (
            f"Stub limit: {args.tpm:,} cl100k_base tokens per minute ({token_cap:,.0f} a "
            f"second, one-second windows), no request limit, shared by every worker; "
            f"{args.latency_ms:.0f} ms per call; the {len(texts):,} lines of samples/texts.txt "
            f"({tokens:,} tokens, {tokens / len(texts):.1f} each) per run; {os.cpu_count()} "
            f"CPUs. Worker logs in {log_dir}. × token cap: from the first enqueue to the "
            f"last vector; 10–90 %: while the stub served the 10th to the 90th percent of the "
            f"texts (its counters sampled every 0.1 s), at the mean tokens per text."
        )
        print(_token_table(runs, token_cap, header))
        return 1 if any(r.error for r in runs) else 0
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
