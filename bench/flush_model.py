"""``scripts/bench flush-model``: the flush policies against celery-batches, in a model.

The load sweep (``scripts/bench sweep``) measures one arrival pattern per 10-minute run. This
is a discrete-event model of one worker that answers in a second which policy makes fewer
calls and which answers sooner, for evenly spaced and for Poisson arrivals, at any load:

- the project: ``pool_size`` calls in flight, each ``--call-ms``; a call leaves when the
  project's own ``worker.flush_policy.batch_is_due`` says so (fed by its ``ArrivalGaps``),
  evaluated when a text arrives, when a call ends and at a batch's deadline, as the
  micro-batcher evaluates it;
- celery-batches 0.11: a flush timer every ``flush_interval`` from the first buffered text
  until a tick finds the buffer empty, and a flush at the 8th text; ``pool_size`` children.

Under the table, for evenly spaced arrivals, it prints the lowest p50 any first-in-first-out
policy could reach with no more calls than celery-batches (``bench.fifo_bound``).

Latency is the wait for a call, plus the call, plus ``--overhead-ms`` (the queue, the task
hand-off, the result write), the same for both. The defaults are calibrated on this
machine: a call took 52.6 ms at p50 against the stub's 50 ms, and the rest 5.5 ms
(docs/benchmark.md, "Load sweep"). These are modelled numbers, not measurements; the sweep
is the measurement, and where both ran they agree within a few milliseconds.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.fifo_bound import fastest_p50_ms
from worker.flush_policy import ArrivalGaps, FlushPolicy, batch_is_due

__all__ = [
    "ModelResult",
    "arrival_times",
    "bound_rows",
    "celery_batches",
    "main",
    "project",
]

PEER = "celery-batches"


@dataclass(frozen=True)
class ModelResult:
    system: str
    texts: int
    calls: int
    latencies_ms: list[float]

    @property
    def texts_per_call(self) -> float:
        return self.texts / self.calls if self.calls else math.nan

    @property
    def p50_ms(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[len(ordered) // 2] if ordered else math.nan


@dataclass(frozen=True)
class Worker:
    call_ms: float = 52.6
    overhead_ms: float = 5.5
    flush_interval_ms: float = 100.0
    batch_size: int = 8
    pool_size: int = 3


def arrival_times(rate_per_s: float, count: int, pattern: str, seed: int) -> list[float]:
    """``count`` arrival times in ms: evenly spaced, or Poisson (exponential gaps)."""
    rng = random.Random(seed)
    gap_ms = 1000.0 / rate_per_s
    now, times = 0.0, []
    for _ in range(count):
        now += gap_ms if pattern == "uniform" else rng.expovariate(1.0 / gap_ms)
        times.append(now)
    return times


def project(policy: FlushPolicy, arrivals: Sequence[float], worker: Worker) -> ModelResult:
    """One project worker under ``policy``; times in ms, the policy's in seconds."""
    waiting: list[float] = []  # arrival times of texts not yet in a call
    call_ends: list[float] = []  # heap
    latencies: list[float] = []
    calls = 0
    gaps = ArrivalGaps(worker.flush_interval_ms / 1000.0)

    def send_due(now: float) -> None:
        nonlocal calls
        while waiting and len(call_ends) < worker.pool_size:
            next_in = gaps.next_in_s(now / 1000.0)
            if not batch_is_due(
                policy,
                waiting=len(waiting),
                batch_size=worker.batch_size,
                # Rounded up a nanosecond: at the deadline, ms to s must not fall short.
                waited_s=(now - waiting[0]) / 1000.0 + 1e-9,
                flush_interval_s=worker.flush_interval_ms / 1000.0,
                in_flight=len(call_ends),
                next_arrival_in_s=next_in,
            ):
                return
            batch, waiting[:] = waiting[: worker.batch_size], waiting[worker.batch_size :]
            end = now + worker.call_ms
            heapq.heappush(call_ends, end)
            calls += 1
            latencies.extend(end + worker.overhead_ms - arrived for arrived in batch)

    pending = list(arrivals)
    pending.reverse()
    now = 0.0
    while pending or call_ends or waiting:
        moments = [pending[-1]] if pending else []
        if call_ends:
            moments.append(call_ends[0])
        if waiting and len(call_ends) < worker.pool_size:
            # A deadline matters only with a slot free; a busy pool wakes at a call's end.
            moments.append(max(now, waiting[0] + worker.flush_interval_ms))
        now = min(moments)
        while call_ends and call_ends[0] <= now:
            heapq.heappop(call_ends)
        if pending and pending[-1] == now:
            pending.pop()
            gaps.observe(now / 1000.0)
            waiting.append(now)
        send_due(now)
    return ModelResult(f"project, {policy}", len(arrivals), calls, latencies)


def celery_batches(arrivals: Sequence[float], worker: Worker) -> ModelResult:
    """celery-batches' ``Batches`` task: a repeating flush timer and a flush at the 8th."""
    buffer: list[float] = []
    children: list[float] = []  # when each busy child is free again (heap)
    latencies: list[float] = []
    calls = 0
    tick: float | None = None

    def flush(now: float) -> None:
        nonlocal calls
        start = now
        if len(children) >= worker.pool_size:
            start = max(now, heapq.heappop(children))
        end = start + worker.call_ms
        heapq.heappush(children, end)
        calls += 1
        latencies.extend(end + worker.overhead_ms - arrived for arrived in buffer)
        buffer.clear()

    for arrived in arrivals:
        while tick is not None and tick <= arrived:
            if buffer:
                flush(tick)
                tick += worker.flush_interval_ms
            else:
                tick = None
        buffer.append(arrived)
        if tick is None:
            tick = arrived + worker.flush_interval_ms
        if len(buffer) >= worker.batch_size:
            flush(arrived)
    if buffer and tick is not None:
        flush(tick)
    return ModelResult(PEER, len(arrivals), calls, latencies)


def _row(pattern: str, load: float, result: ModelResult, peer: ModelResult) -> str:
    if result.system == PEER:
        verdict = ""
    else:
        sooner = result.p50_ms < peer.p50_ms
        fewer = result.texts_per_call >= peer.texts_per_call
        verdict = (
            "both" if sooner and fewer else "sooner" if sooner else "fewer" if fewer else "neither"
        )
    return (
        f"| {pattern} | {load:g} | {result.system} | {result.texts_per_call:.2f} | "
        f"{result.p50_ms:.1f} | {verdict} |"
    )


def run(
    loads: Sequence[float],
    patterns: Sequence[str],
    policies: Sequence[FlushPolicy],
    capacity: float,
    texts: int,
    worker: Worker,
    seed: int = 7,
) -> list[str]:
    lines = [
        "| arrivals | load % | system | texts/call | p50 ms | better than celery-batches |",
        "|---|---:|---|---:|---:|---|",
    ]
    for pattern in patterns:
        for load in loads:
            arrivals = arrival_times(capacity * load / 100.0, texts, pattern, seed)
            peer = celery_batches(arrivals, worker)
            lines.append(_row(pattern, load, peer, peer))
            for policy in policies:
                lines.append(_row(pattern, load, project(policy, arrivals, worker), peer))
    return lines


def bound_rows(loads: Sequence[float], capacity: float, texts: int, worker: Worker) -> list[str]:
    """For evenly spaced arrivals: can any policy beat celery-batches on both counts?

    Each row is celery-batches' texts per call and p50 in the model, and the lowest p50 any
    first-in-first-out batcher could reach with at least those texts per call
    (``bench.fifo_bound``), with the model's call and overhead. A margin of zero or less
    means no policy can have a lower p50 there without making more calls. The bound ignores
    queueing, so loads of 100 % and more, where a backlog builds, are left out.
    """
    lines = [
        "| load % | celery-batches texts/call | its p50 ms | fastest p50 ms at no more calls "
        "| margin ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for load in (x for x in loads if x < 100):
        rate = capacity * load / 100.0
        peer = celery_batches(arrival_times(rate, texts, "uniform", seed=0), worker)
        bound = fastest_p50_ms(
            gap_ms=1000.0 / rate,
            base_ms=worker.call_ms + worker.overhead_ms,
            min_texts_per_call=peer.texts_per_call,
            batch_size=worker.batch_size,
        )
        margin = peer.p50_ms - bound
        lines.append(
            f"| {load:g} | {peer.texts_per_call:.2f} | {peer.p50_ms:.1f} | {bound:.1f} | "
            f"{0.0 if abs(margin) < 0.05 else margin:.1f} |"
        )
    return lines


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench flush-model", description=__doc__)
    parser.add_argument("--loads", default="1,5,10,25,50,75", help="%% of --capacity")
    parser.add_argument("--patterns", default="uniform,poisson", help="uniform and/or poisson")
    parser.add_argument(
        "--policies", default=",".join(FlushPolicy), help="the project's flush policies"
    )
    parser.add_argument("--capacity", type=float, default=418.0, help="texts/s at 100 %%")
    parser.add_argument("--texts", type=int, default=3000, help="texts per load")
    parser.add_argument("--call-ms", type=float, default=Worker.call_ms)
    parser.add_argument("--overhead-ms", type=float, default=Worker.overhead_ms)
    parser.add_argument("--flush-interval-ms", type=float, default=Worker.flush_interval_ms)
    args = parser.parse_args(argv)
    if args.capacity <= 0 or args.texts < 1:
        parser.error("--capacity and --texts must be positive")
    return args


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> None:
    args = _parse(argv)
    worker = Worker(args.call_ms, args.overhead_ms, args.flush_interval_ms)
    try:
        loads = [float(x) for x in args.loads.split(",") if x]
        policies = [FlushPolicy(x) for x in args.policies.split(",") if x]
    except ValueError as exc:
        raise SystemExit(f"flush-model: {exc}") from None
    patterns = [x for x in args.patterns.split(",") if x]
    if not set(patterns) <= {"uniform", "poisson"}:
        raise SystemExit("flush-model: --patterns takes uniform and/or poisson")
    echo(
        f"Model: one worker, {worker.pool_size} calls in flight of {worker.call_ms:g} ms, "
        f"{worker.overhead_ms:g} ms overhead per text, flush interval "
        f"{worker.flush_interval_ms:g} ms, {args.texts} texts per load, capacity "
        f"{args.capacity:g} texts/s. Modelled, not measured (see the module docstring)."
    )
    for line in run(loads, patterns, policies, args.capacity, args.texts, worker):
        echo(line)
    if "uniform" in patterns:
        echo("")
        echo(
            "Evenly spaced arrivals: the lowest p50 any first-in-first-out policy can reach "
            "with no more calls per text than celery-batches (bench/fifo_bound.py)."
        )
        for line in bound_rows(loads, args.capacity, args.texts, worker):
            echo(line)


if __name__ == "__main__":
    main()
