"""``scripts/bench sweep``: latency and texts per call from idle to overload, one worker each.

A paced, open-loop producer (``bench.sweep_load``) offers each load in turn, as a share of
one project worker's capacity (measured first from a backlog it drains, or ``--capacity``),
at the same absolute rates (texts/s) for every system:

- ``project``: ``celery -A worker worker`` as it stands, once per ``--policies`` entry, each
  passed as ``EMBEDDINGS_FLUSH_POLICY`` (``default`` leaves it unset);
- ``naive``: a plain task per text (``bench/naive_tasks.py``), threads pool, the project's
  concurrency;
- ``batches``: celery-batches 0.11 (``bench/batches_peer.py``), prefork, in its own
  ``.venv-batches`` (made on first use: it pins ``celery<5.7``).

Each step sends at its rate for a warm-up, then for ``--step-s`` seconds (or
``--step-texts`` texts) that are measured; then the step drains before the next starts. It
EMPTIES the Redis database it is given (default 10) before and after each system.
Prints a markdown table, writes it to ``OUT/sweep.md`` with a plot ``OUT/sweep.png`` and
the numbers in ``OUT/sweep.json``, and checks the targets of issue #12 for the project's
default policy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
from celery import Celery

from bench.sweep_load import (
    ARRIVALS,
    RESULT_KEY_PREFIX,
    ResultReader,
    StepResult,
    drain_rate,
    run_step,
)
from bench.sweep_report import TargetChecks, check_targets, markdown, plot
from bench.sweep_systems import (
    BATCHES_CONCURRENCY,
    DEFAULT_POLICY,
    System,
    build_systems,
    ensure_batches_venv,
)
from devstack import REPO_ROOT, StubProcess, WorkerProcess

DEFAULT_OUT = REPO_ROOT / "bench" / "out"
SYSTEMS = ("project", "naive", "batches")
DEFAULT_LOADS = "1,5,10,25,50,75,100,120"
DISTINCT_TEXTS = 2000  # cycled through; the stub encodes each once, before any system runs
# A pause after each drained step, so every step starts from an idle worker (celery-batches'
# flush timer, for one, only stops once a tick finds its buffer empty).
_IDLE_BETWEEN_STEPS_S = 0.5
ARRIVAL_WORDS = {
    "uniform": "sends evenly spaced",
    "poisson": "sends with Poisson arrivals (one seeded sequence per load, the same for every "
    "system)",
}
# Sized so that a full sweep of the three systems takes about 10 minutes on 2 cores.
FULL = {"loads": DEFAULT_LOADS, "step_s": 15.0, "warmup_s": 3.0, "capacity_texts": 2000}
QUICK = {"loads": "1,100", "step_s": 1.0, "warmup_s": 0.3, "capacity_texts": 300}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--latency-ms", type=float, default=50.0, help="stub latency per call (default 50)"
    )
    parser.add_argument("--dimensions", type=int, default=1536, help="vector size (1536)")
    parser.add_argument(
        "--loads", help=f"%% of capacity, comma-separated (default {DEFAULT_LOADS})"
    )
    parser.add_argument(
        "--policies",
        default=DEFAULT_POLICY,
        help="EMBEDDINGS_FLUSH_POLICY values for the project, one run each; 'default' leaves "
        "it unset (default: default)",
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"of {','.join(SYSTEMS)}")
    parser.add_argument(
        "--capacity", type=float, default=0.0, help="texts/s at 100 %% (0: measure it)"
    )
    parser.add_argument(
        "--capacity-texts", type=int, help="backlog for the capacity run (default 2000)"
    )
    parser.add_argument("--step-s", type=float, help="measured seconds per load (default 15)")
    parser.add_argument(
        "--step-texts", type=int, default=0, help="measured texts per load (overrides --step-s)"
    )
    parser.add_argument(
        "--arrivals",
        choices=ARRIVALS,
        default="uniform",
        help="evenly spaced sends, or Poisson (exponential gaps, one seeded sequence for "
        "every system); default uniform",
    )
    parser.add_argument("--warmup-s", type=float, help="unmeasured lead-in per load, s (default 3)")
    parser.add_argument(
        "--stall-s",
        type=float,
        default=30.0,
        help="a drain gives up after this many seconds without a result (default 30)",
    )
    parser.add_argument(
        "--batches-concurrency",
        type=int,
        default=BATCHES_CONCURRENCY,
        help="celery-batches prefork children (default 3)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/10",
        help="broker and results; this database is EMPTIED (default %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where sweep.md and sweep.png go"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: loads 1,100, 1 s steps, 0.3 s warm-up, a 300-text capacity run "
        "(options given explicitly still win)",
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    try:
        args.loads = sorted(float(load) for load in args.loads.split(","))
    except ValueError:
        parser.error(f"--loads must be numbers, got {args.loads!r}")
    args.policies = [p for p in args.policies.split(",") if p]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # The Celery apps read REDIS_URL when first imported, so set it before importing them.
    os.environ["REDIS_URL"] = args.redis_url
    from bench.scenarios import BenchContext, warm_stub
    from worker.settings import Settings

    if "batches" in args.systems:
        ensure_batches_venv()
    # Read this way so the sweep still runs on code from before flush policies existed.
    default_policy = str(getattr(Settings(), "flush_policy", "interval"))
    texts = [
        f"sweep text {i}: the quick brown fox jumps over the lazy dog"
        for i in range(DISTINCT_TEXTS)
    ]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    run_id = uuid.uuid4().hex[:8]
    sender = Celery("sweep-producer", broker=args.redis_url)
    # No result backend: the reader below gets every result; Celery's own would subscribe
    # per task and, never read, pile the results up in its connection.
    sender.conf.update(
        task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True
    )
    load_before = os.getloadavg()
    stub = StubProcess(log_dir / "stub.log", latency_ms=args.latency_ms, dimensions=args.dimensions)
    ctx = BenchContext(args.redis_url, stub, args.dimensions, texts, 0, log_dir, 120.0)
    systems, measure = build_systems(args, ctx, default_policy)
    reader: ResultReader | None = None
    steps: list[StepResult] = []
    capacity = args.capacity
    running: WorkerProcess | None = None
    try:
        stub.wait_ready()
        warm_stub(ctx)
        reader = ResultReader(args.redis_url, f"sweep-{run_id}-")
        if not capacity:
            try:
                capacity, running = _measure_capacity(
                    args, client, sender, reader, measure, texts, run_id
                )
            except RuntimeError as exc:  # no capacity, no rates to offer
                print(f"sweep: {exc}", file=sys.stderr)
                return 2
            print(f"sweep: capacity {capacity:.1f} texts/s", file=sys.stderr, flush=True)
        for index, system in enumerate(systems):
            # The capacity run's worker, drained, goes on to sweep its own system.
            worker, running = (running, None) if system is measure else (None, running)
            steps += _run_system(
                args,
                client,
                sender,
                reader,
                stub,
                system,
                capacity,
                texts,
                f"sweep-{run_id}-{index}-",
                worker,
            )
    finally:
        if running is not None:  # measured capacity for a project that is not swept
            running.stop()
        if reader is not None:
            reader.close()
        stub.stop()
        client.flushdb()
        client.close()

    return _report(args, systems, steps, capacity, default_policy, load_before, log_dir)


def _send(sender: Celery, system: System) -> Callable[[str, str], object]:
    def send(task_id: str, text: str) -> object:
        return sender.send_task(system.task, args=(text,), task_id=task_id, queue=system.queue)

    return send


def _start(sender: Celery, system: System) -> WorkerProcess:
    print(f"sweep: starting {system.label} ...", file=sys.stderr, flush=True)
    worker = system.start()
    try:
        worker.wait_ready(sender, timeout_s=60)
    except BaseException:
        worker.stop()
        raise
    return worker


def _measure_capacity(
    args: argparse.Namespace,
    client: redis.Redis,
    sender: Celery,
    reader: ResultReader,
    system: System,
    texts: list[str],
    run_id: str,
) -> tuple[float, WorkerProcess]:
    """Texts/s of one project worker draining a backlog queued before it started; the worker.

    The worker is left running, drained, for the caller to sweep with or stop.
    """
    ids = [f"sweep-{run_id}-capacity-{i}" for i in range(args.capacity_texts)]
    send = _send(sender, system)
    for i, task_id in enumerate(ids):
        send(task_id, texts[i % len(texts)])
    print(f"sweep: capacity run, {len(ids)} texts queued", file=sys.stderr, flush=True)
    worker = _start(sender, system)
    try:
        rate, unfinished = drain_rate(reader, ids, args.stall_s)
        if unfinished or math.isnan(rate):
            raise RuntimeError(
                f"the capacity run did not drain ({unfinished} of {len(ids)} texts unfinished); "
                f"see {worker.log_path}"
            )
    except BaseException:
        worker.stop()
        client.flushdb()
        raise
    _forget(client, reader, ids)
    return rate, worker


def _forget(client: redis.Redis, reader: ResultReader, task_ids: list[str]) -> None:
    # Results are ~8-34 KB each: drop them as soon as they are counted.
    for i in range(0, len(task_ids), 1000):
        client.delete(*[RESULT_KEY_PREFIX + t for t in task_ids[i : i + 1000]])
    reader.forget(task_ids)


def _run_system(
    args: argparse.Namespace,
    client: redis.Redis,
    sender: Celery,
    reader: ResultReader,
    stub: StubProcess,
    system: System,
    capacity: float,
    texts: list[str],
    prefix: str,
    worker: WorkerProcess | None = None,
) -> list[StepResult]:
    """Every load in turn against ``system`` (its ``worker`` if already running); the rows."""
    steps = []
    if worker is None:
        try:
            worker = _start(sender, system)
        except Exception as exc:  # one system that cannot start must not lose the others' rows
            client.flushdb()
            error = f"did not start: {type(exc).__name__}: {str(exc)[-300:]}"
            return [
                StepResult(system.label, load, capacity * load / 100, error=error)
                for load in args.loads
            ]
    # Kept alive: StubProcess.stats() makes a client per call, ~40 ms inside the send loop.
    stub_http = httpx.Client(base_url=f"http://127.0.0.1:{stub.port}", timeout=10)
    stopped = ""  # why the higher loads are skipped: they would only pile onto a backlog
    try:
        for index, load in enumerate(args.loads):
            rate = capacity * load / 100
            step = StepResult(system.label, load, rate)
            steps.append(step)
            if not worker.alive():
                step.error = f"the worker exited; see {worker.log_path}"
                continue
            if stopped:
                step.error = f"skipped: {stopped}"
                continue
            measured = args.step_texts or round(rate * args.step_s)
            print(
                f"sweep: {system.label} at {load:g} % ({rate:.1f} texts/s, {measured} texts)",
                file=sys.stderr,
                flush=True,
            )
            try:
                task_ids = run_step(
                    step,
                    send=_send(sender, system),
                    reader=reader,
                    stats=lambda: dict(stub_http.get("/_stub/stats").raise_for_status().json()),
                    reset_stats=lambda: stub_http.post("/_stub/reset").raise_for_status(),
                    texts=texts,
                    id_prefix=f"{prefix}{index}-",
                    warmup_texts=max(1, round(rate * args.warmup_s)),
                    measured_texts=max(2, measured),
                    stall_s=args.stall_s,
                    arrivals=args.arrivals,
                    seed=index,
                )
            except Exception as exc:  # keep the rows measured so far; this system stops here
                step.error, stopped = f"{type(exc).__name__}: {exc}", "a lower load failed"
                continue
            if step.lost:
                stopped = "a lower load did not drain"
            _forget(client, reader, task_ids)
            time.sleep(_IDLE_BETWEEN_STEPS_S)
    finally:
        stub_http.close()
        worker.stop()
        client.flushdb()  # a step that never drained leaves its texts queued or unacked
    return steps


def _report(
    args: argparse.Namespace,
    systems: list[System],
    steps: list[StepResult],
    capacity: float,
    default_policy: str,
    load_before: tuple[float, float, float],
    log_dir: Path,
) -> int:
    measured = "given" if args.capacity else f"measured: one worker draining {args.capacity_texts}"
    window = f"{args.step_texts} texts" if args.step_texts else f"{args.step_s:g} s"
    load_after = os.getloadavg()
    header = (
        f"## Load sweep {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Stub API latency L = {args.latency_ms:g} ms per call, {args.dimensions} dimensions. "
        f"Capacity {capacity:.1f} texts/s ({measured}); each load is offered at "
        f"capacity × load %, the same texts/s for every system, for a {args.warmup_s:g} s "
        f"warm-up and then {window} measured, "
        f"{ARRIVAL_WORDS[args.arrivals]}. Latency is enqueue → result published to the "
        f"producer. {os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min).\n\n"
        "Systems, one worker process each:\n\n"
        + "\n".join(f"- {system.label}: {system.setup}" for system in systems)
    )
    projects = [system for system in systems if system.key == "project"]
    defaults = [system for system in projects if system.default_policy]
    peer = next((system.label for system in systems if system.key == "batches"), None)
    checks: list[str] = []
    if projects:
        target = (defaults or projects)[0].label
        if not defaults:
            checks.append(
                f"NOTE: the default policy ({default_policy}) did not run; checks use {target}"
            )
        checks += check_targets(steps, target, peer, TargetChecks(args.latency_ms))
    else:
        checks.append("SKIP: the project did not run")
    report = markdown(steps, header, checks)
    title = (
        f"load sweep: one worker each, stub latency {args.latency_ms:g} ms, capacity "
        f"{capacity:.0f} texts/s"
    )
    plot_note = plot(steps, args.out / "sweep.png", title, args.latency_ms)
    report += f"\n{plot_note}; worker logs in {log_dir}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.md").write_text(report)
    # The numbers behind the table, to compare runs (policies, builds) without re-running.
    summary = []
    for step in steps:
        row = {k: v for k, v in asdict(step).items() if k != "latencies_ms"}
        row.update(texts_per_call=step.texts_per_call, p50_ms=step.p50_ms, p99_ms=step.p99_ms)
        # NaN (not measured) is not JSON: null instead.
        summary.append({k: None if v != v else v for k, v in row.items()})
    (args.out / "sweep.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(report)
    return 1 if any(s.error for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
