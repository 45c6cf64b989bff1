"""``scripts/bench chaos``: texts through 2 workers while Redis, a worker, the API, the budget fail.

A backfill (``embed-file``, bulk lane) and web-app traffic (``embed_texts``, ``embed_text``,
``aembed_texts``, interactive lane) run together through 2 workers, while faults come one
after another: a worker ``kill -9``ed (and replaced), the Redis restarted (append-only file
on), the Redis full (``maxmemory`` at its usage, ``noeviction``), the API answering 503, and
the shared budget's Redis killed. Then it checks the invariants:

- every web-app text came back with its own vector, or its call raised a typed error (an
  ``EmbeddingError``); never a raw ``redis``/``kombu`` exception;
- every backfill line is in ``embed-file``'s output with its own vector (a run stopped by an
  outage is re-run once, as its message says);
- API inputs ≤ texts × 1.01;
- the workers alive.

It prints one table of faults against outcomes (docs/reliability.md shows the latest run).
Its own redis-servers use ports 6392 (broker and results) and 6393 (budget) by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.env import bench_env
from devstack import REPO_ROOT, WorkerProcess, wait_for
from stubapi import StubServer
from stubapi.vectors import vector_for

DIMS = 16
CALL_TIMEOUT_S = 10.0
SYNC_CALLERS = 4  # web-app threads (embed_texts, and every third call embed_text)
ASYNC_CALLERS = 2  # event loops calling aembed_texts
WEB_BATCH = 10  # texts per embed_texts / aembed_texts call


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backfill", type=int, default=4000, help="embed-file lines (4000)")
    parser.add_argument("--fault-s", type=float, default=4.0, help="each fault's length (4 s)")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="stub latency in ms (100)")
    parser.add_argument("--redis-port", type=int, default=6392)
    parser.add_argument("--budget-port", type=int, default=6393)
    return parser.parse_args(argv)


class PrivateRedis:
    """A redis-server of the bench's own on ``port``; ``aof`` keeps an append-only file."""

    def __init__(self, port: int, workdir: Path, *, aof: bool) -> None:
        self.port, self.workdir, self.aof = port, workdir, aof
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.workdir), "--appendonly", "yes" if self.aof else "no",
                "--appendfsync", "always", "--maxmemory-policy", "noeviction"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited (port in use?)")
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=1) as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 15, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: the append-only file is flushed
            self.proc.wait(15)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)


def _app(url: str) -> Celery:
    from worker.celery_ext.config import apply_config, with_redis_url
    from worker.settings import Settings

    app = Celery("chaos", set_as_current=False)
    apply_config(app, with_redis_url(Settings.from_env(), url))
    return app


def _right(vector: Any, text: str) -> bool:
    want = vector_for(text, DIMS)
    return (
        isinstance(vector, list)
        and len(vector) == len(want)
        and all(abs(a - b) <= 1e-7 + 1e-6 * abs(b) for a, b in zip(vector, want, strict=True))
    )


def classify(exc: BaseException) -> str:
    """``typed:Name`` for the project's errors, ``raw:module.Name`` for a redis or kombu
    one (the invariant), ``untyped:module.Name`` for anything else."""
    from worker.errors import EmbeddingError

    if isinstance(exc, EmbeddingError):
        return f"typed:{type(exc).__name__}"
    module = type(exc).__module__
    kind = "raw" if module.split(".")[0] in ("redis", "kombu") else "untyped"
    return f"{kind}:{module}.{type(exc).__name__}"


@dataclass
class Ledger:
    """What happened, by the fault that was on when each call started."""

    phase: str = "calm"
    calls: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    texts: int = 0
    wrong: int = 0
    # API inputs and distinct texts the stub had seen when each phase began.
    inputs_at: dict[str, tuple[int, int]] = field(default_factory=dict)
    slowest_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, phase: str, outcome: str, texts: int, took_s: float, wrong: int = 0) -> None:
        with self.lock:
            self.calls[phase][outcome] += 1
            self.texts += texts
            self.wrong += wrong
            self.slowest_s[phase] = max(self.slowest_s[phase], took_s)


def _web_sync(app: Celery, ledger: Ledger, stop: threading.Event, name: str) -> None:
    import producers

    n = 0
    while not stop.is_set():
        n += 1
        phase = ledger.phase
        single = n % 3 == 0
        texts = [f"web {name} {n} {i}" for i in range(1 if single else WEB_BATCH)]
        started = time.monotonic()
        try:
            if single:
                vectors = [producers.embed_text(texts[0], timeout=CALL_TIMEOUT_S, app=app)]
            else:
                vectors = producers.embed_texts(texts, timeout=CALL_TIMEOUT_S, app=app)
        except Exception as exc:
            ledger.record(phase, classify(exc), len(texts), time.monotonic() - started)
            stop.wait(0.2)  # a web app backs off a little after an error
            continue
        wrong = sum(not _right(v, t) for v, t in zip(vectors, texts, strict=True))
        took_s = time.monotonic() - started
        ledger.record(phase, "ok" if not wrong else "wrong", len(texts), took_s, wrong)


def _web_async(app: Celery, ledger: Ledger, stop: threading.Event, name: str) -> None:
    import producers

    async def loop() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            phase = ledger.phase
            texts = [f"web {name} {n} {i}" for i in range(WEB_BATCH)]
            started = time.monotonic()
            try:
                vectors = await producers.aembed_texts(texts, timeout=CALL_TIMEOUT_S, app=app)
            except Exception as exc:
                ledger.record(phase, classify(exc), len(texts), time.monotonic() - started)
                await asyncio.sleep(0.2)
                continue
            wrong = sum(not _right(v, t) for v, t in zip(vectors, texts, strict=True))
            took_s = time.monotonic() - started
            ledger.record(phase, "ok" if not wrong else "wrong", len(texts), took_s, wrong)

    asyncio.run(loop())


def _embed_file(source: Path, output: Path, redis_url: str, log: Path) -> int:
    env = bench_env(redis_url, "http://127.0.0.1:9/v1", DIMS)
    argv = [sys.executable, "-m", "producers.cli", str(source), "-o", str(output),
            "--no-progress", "--timeout", "120", "--window", "500"]  # fmt: skip
    with open(log, "a") as out:
        return subprocess.run(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=out).returncode


@contextmanager
def _stack(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, Any]]:
    main = PrivateRedis(args.redis_port, workdir / "redis", aof=True)
    budget = PrivateRedis(args.budget_port, workdir / "budget", aof=False)
    workers: list[WorkerProcess] = []
    with StubServer(host="127.0.0.1", port=0, latency_ms=args.latency_ms, dimensions=DIMS) as stub:
        main.start()
        budget.start()
        env = bench_env(
            main.url, stub.base_url, DIMS,
            EMBEDDINGS_LIMITER_URL=budget.url, EMBEDDINGS_RPM_LIMIT="60000",
            EMBEDDINGS_LIMITER_MAX_WAIT_S="2", BROKER_VISIBILITY_TIMEOUT="30",
            BROKER_UNACKED_RESTORE_INTERVAL="1", EMBEDDINGS_INITIAL_BACKOFF_S="0.1",
            EMBEDDINGS_MAX_BACKOFF_S="0.5", EMBEDDINGS_TASK_RETRY_BACKOFF_S="0.5",
            EMBEDDINGS_TASK_RETRY_BACKOFF_MAX_S="2", EMBEDDINGS_BREAKER_RESET_TIMEOUT_S="1",
        )  # fmt: skip

        def start_worker(name: str) -> WorkerProcess:
            worker = WorkerProcess(env, workdir / f"{name}.log", name)
            workers.append(worker)
            worker.wait_ready(_app(main.url), timeout_s=60)
            return worker

        try:
            yield {"main": main, "budget": budget, "stub": stub, "workers": workers,
                   "start_worker": start_worker}  # fmt: skip
        finally:
            for worker in workers:
                if worker.alive():
                    worker.stop()
            budget.stop()
            main.stop()


def _faults(stack: dict[str, Any], fault_s: float) -> list[tuple[str, Callable[[], None]]]:
    main: PrivateRedis = stack["main"]
    budget: PrivateRedis = stack["budget"]

    def kill_worker() -> None:
        stack["workers"][0].kill()
        stack["start_worker"]("chaos-replacement")
        time.sleep(fault_s)

    def restart_redis() -> None:
        main.stop()
        time.sleep(1.0)
        main.start()
        time.sleep(fault_s)

    def fill_redis() -> None:
        with main.client() as client:
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", str(used))
            time.sleep(fault_s)
            client.config_set("maxmemory", "0")

    def cut_api() -> None:
        stack["stub"].add_fault(status=503, duration_s=fault_s)
        time.sleep(fault_s + 1.0)

    def kill_budget() -> None:
        assert budget.proc is not None
        budget.proc.kill()
        budget.proc.wait(10)
        budget.proc = None
        time.sleep(fault_s)
        budget.start()
        time.sleep(1.0)

    return [
        ("worker kill -9 (and a replacement)", kill_worker),
        ("Redis restart (AOF)", restart_redis),
        ("Redis full (maxmemory = used)", fill_redis),
        ("API answers 503", cut_api),
        ("budget Redis killed", kill_budget),
    ]


def run(args: argparse.Namespace) -> int:
    if shutil.which("redis-server") is None:
        print("chaos: redis-server is not installed", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    backfill = [f"backfill line {i}: some document text {i % 97}" for i in range(args.backfill)]
    source, output = workdir / "backfill.jsonl", workdir / "backfill.out.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(backfill))
    )
    ledger = Ledger()
    with _stack(args, workdir) as stack:
        app = _app(stack["main"].url)
        stack["start_worker"]("chaos-a")
        stack["start_worker"]("chaos-b")
        stub: StubServer = stack["stub"]
        codes: list[int] = []
        filer = threading.Thread(
            target=lambda: codes.append(
                _embed_file(source, output, stack["main"].url, workdir / "embed-file.log")
            ),
            daemon=True,
        )
        stop = threading.Event()
        web = [threading.Thread(target=_web_sync, args=(app, ledger, stop, f"s{i}"), daemon=True)
               for i in range(SYNC_CALLERS)]  # fmt: skip
        web += [
            threading.Thread(target=_web_async, args=(app, ledger, stop, f"a{i}"), daemon=True)
            for i in range(ASYNC_CALLERS)
        ]
        filer.start()
        for thread in web:
            thread.start()
        ledger.inputs_at["calm"] = (0, 0)
        time.sleep(args.fault_s)  # the first fault comes once the run is under way
        for number, (name, inject) in enumerate(_faults(stack, args.fault_s), 1):
            ledger.phase = f"{number}. {name}"
            ledger.inputs_at[ledger.phase] = _seen(stub)
            inject()
            ledger.phase = f"… {args.fault_s:g} s of calm after fault {number}"
            ledger.inputs_at[ledger.phase] = _seen(stub)
            time.sleep(args.fault_s)
        ledger.phase = "end: web-app stops; the sweep, the rest of embed-file"
        ledger.inputs_at[ledger.phase] = _seen(stub)
        stop.set()
        for thread in web:
            thread.join(CALL_TIMEOUT_S + 30)
        filer.join(600)
        if codes and codes[-1] != 0:  # stopped by an outage: "re-run the same command"
            codes.append(_embed_file(source, output, stack["main"].url, workdir / "embed-file.log"))
        alive = [w.alive() for w in stack["workers"][1:]]  # the first was killed on purpose
        stats = stub.stats()
    lines = _read_output(output, backfill)
    texts = ledger.texts + len(backfill)
    print(_table(ledger, stats, codes, lines, texts, alive, args))
    print(f"\nlogs and files: {workdir}")
    return 0 if _invariants_hold(ledger, stats, lines, texts, alive) else 1


def _seen(stub: StubServer) -> tuple[int, int]:
    stats = stub.stats()
    return stats["total_inputs"], stats["texts_seen"]


def _read_output(output: Path, backfill: list[str]) -> Counter[str]:
    found: Counter[str] = Counter()
    seen: set[int] = set()
    if output.exists():
        for record in map(json.loads, output.read_text().splitlines()):
            seen.add(record["id"])
            if "error" in record:
                found["error"] += 1
            else:
                found["ok" if _right(record["embedding"], backfill[record["id"]]) else "wrong"] += 1
    found["missing"] = len(set(range(len(backfill))) - seen)
    return found


def _invariants_hold(
    ledger: Ledger, stats: dict[str, Any], lines: Counter[str], texts: int, alive: list[bool]
) -> bool:
    raw = sum(
        n for counts in ledger.calls.values() for k, n in counts.items() if k.startswith("raw")
    )
    return (
        raw == 0
        and ledger.wrong == 0
        and lines["wrong"] == 0
        and lines["missing"] == 0
        and stats["total_inputs"] <= texts * 1.01
        and all(alive)
    )


def _table(
    ledger: Ledger,
    stats: dict[str, Any],
    codes: list[int],
    lines: Counter[str],
    texts: int,
    alive: list[bool],
    args: argparse.Namespace,
) -> str:
    rows = [
        f"| fault (each ~{args.fault_s:g} s) | web-app calls started during it "
        "| slowest call | API inputs | paid twice |",
        "|---|---|---:|---:|---:|",
    ]
    phases = list(ledger.inputs_at)
    for i, phase in enumerate(phases):
        final = (stats["total_inputs"], stats["texts_seen"])
        end = ledger.inputs_at[phases[i + 1]] if i + 1 < len(phases) else final
        inputs = end[0] - ledger.inputs_at[phase][0]
        twice = inputs - (end[1] - ledger.inputs_at[phase][1])
        counts = ledger.calls.get(phase, Counter())
        shown = ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "—"
        slowest = f"{ledger.slowest_s[phase]:.1f} s" if counts else "—"
        rows.append(f"| {phase} | {shown} | {slowest} | {inputs:,} | {twice} |")
    raw = sum(n for c in ledger.calls.values() for k, n in c.items() if k.startswith("raw"))
    untyped = sum(n for c in ledger.calls.values() for k, n in c.items() if k.startswith("untyped"))
    dup = stats["total_inputs"] - stats["texts_seen"]
    rows += [
        "",
        "| invariant | result |",
        "|---|---|",
        f"| web-app texts with a wrong vector | {ledger.wrong} |",
        f"| raw redis/kombu exceptions from a public producer function | {raw} |",
        f"| other untyped exceptions from a public producer function | {untyped} |",
        f"| embed-file: exit codes (a stopped run is re-run once) | {codes} |",
        f"| backfill lines right / error / wrong / missing | {lines['ok']:,} / {lines['error']}"
        f" / {lines['wrong']} / {lines['missing']} of {args.backfill:,} |",
        f"| API inputs / texts (bound: × 1.01) | {stats['total_inputs']:,} / {texts:,} = "
        f"{stats['total_inputs'] / max(1, texts):.4f} ({dup} paid twice) |",
        f"| workers alive at the end (survivor, replacement) | {alive} |",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    return run(_parse(argv))


if __name__ == "__main__":
    sys.exit(main())
