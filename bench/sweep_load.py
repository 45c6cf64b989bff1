"""The load sweep's open-loop producer: paced sends, and results timestamped as they arrive.

One thread sends texts on a fixed schedule (text ``i`` of a step is due ``i / rate`` seconds
after the step starts, or after seeded exponential gaps for Poisson arrivals) and never
waits for a result, so a slow system cannot slow the offered load down; when the sender
falls behind it catches up at once and the lag is reported. A second thread holds one Redis
pattern subscription to ``celery-task-meta-<run prefix>*`` and timestamps each result the
moment its message arrives: Celery's Redis result backend publishes every stored result on
that channel, and it is how ``AsyncResult.get()`` learns of it. The same sender and reader
serve every system, so the latency (enqueue → result available to the producer) is measured
the same way for each.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.measure import percentile

__all__ = [
    "ARRIVALS",
    "RESULT_KEY_PREFIX",
    "ResultReader",
    "StepResult",
    "arrival_offsets",
    "drain_rate",
    "paced_send",
    "run_step",
]

RESULT_KEY_PREFIX = "celery-task-meta-"
ARRIVALS = ("uniform", "poisson")
# Celery's result meta starts with its status: the head of the message is enough to read it.
_STATUS = re.compile(rb'"status":\s*"([A-Z]+)"')
_TERMINAL_FAILURES = {"FAILURE", "REVOKED", "REJECTED"}
_POLL_S = 0.05

# (task id, text): sends one text as a task with that id.
Send = Callable[[str, str], object]
# Statistics of the stub API right now: GET /_stub/stats.
Stats = Callable[[], dict[str, Any]]


class ResultReader:
    """Timestamps, with ``time.perf_counter``, each result published under ``prefix``."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub()
        self._channel_prefix = (RESULT_KEY_PREFIX + prefix).encode()
        self._pubsub.psubscribe(self._channel_prefix.decode() + "*")
        # Sends start only once Redis has confirmed the subscription, so no result is missed.
        deadline = time.monotonic() + 10
        while True:
            message = self._pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "psubscribe":
                break
            if time.monotonic() > deadline:
                raise TimeoutError("Redis did not confirm the result subscription")
        self.done_at: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.error: BaseException | None = None  # why the reader stopped early, if it did
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="sweep-results", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self._read_until_stopped()
        except Exception as exc:  # a dead reader must fail the step, not leave it waiting
            self.error = exc

    def _read_until_stopped(self) -> None:
        prefix_len = len(RESULT_KEY_PREFIX)
        while not self._stopping.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is None or message["type"] != "pmessage":
                continue
            now = time.perf_counter()
            task_id = message["channel"][prefix_len:].decode()
            match = _STATUS.search(message["data"][:200])
            status = match.group(1).decode() if match else "UNKNOWN"
            if status == "SUCCESS":
                # The first SUCCESS counts; a late duplicate write changes nothing.
                self.done_at.setdefault(task_id, now)
            elif status in _TERMINAL_FAILURES:
                self.failed.setdefault(task_id, status)
            # RETRY and other interim states: the text is not done yet.

    def finished(self, task_id: str) -> bool:
        return task_id in self.done_at or task_id in self.failed

    def forget(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.done_at.pop(task_id, None)
            self.failed.pop(task_id, None)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


@dataclass
class StepResult:
    """One system at one offered load. Rates are texts per second, latencies milliseconds."""

    system: str
    load_pct: float
    target_rate: float
    texts: int = 0  # measured texts sent
    offered_rate: float = math.nan
    achieved_rate: float = math.nan
    calls: int = 0  # successful API calls in the measured window
    inputs: int = 0  # texts carried by those calls
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    lost: int = 0  # measured texts with no result when the drain gave up
    lag_p99_ms: float = 0.0  # how far the sender fell behind its schedule
    lag_max_ms: float = 0.0
    load_avg: float = math.nan  # the machine's 1-minute load average as the window closed
    error: str | None = None

    @property
    def texts_per_call(self) -> float:
        return self.inputs / self.calls if self.calls else math.nan

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)


def arrival_offsets(count: int, rate: float, arrivals: str, seed: int) -> list[float]:
    """When each of ``count`` texts is due, in seconds from the start, at ``rate`` texts/s.

    ``uniform``: evenly spaced. ``poisson``: exponential gaps from a generator seeded with
    ``seed``, so every system is offered the very same sequence.
    """
    if arrivals == "uniform":
        return [i / rate for i in range(count)]
    if arrivals != "poisson":
        raise ValueError(f"unknown arrivals {arrivals!r}; choose from {ARRIVALS}")
    rng = random.Random(seed)
    offsets, due = [], 0.0
    for _ in range(count):
        offsets.append(due)
        due += rng.expovariate(rate)
    return offsets


def paced_send(
    send: Send,
    items: list[tuple[str, str]],
    offsets: list[float],
    start: float,
    sent_at: dict[str, float],
    on_index: Callable[[int], None] | None = None,
) -> list[float]:
    """Send ``items`` (task id, text), item ``i`` due at ``start + offsets[i]``; each lag in s.

    ``sent_at`` gets each task id's send time (``perf_counter``, taken just before the send).
    ``on_index(i)``, when given, runs before item ``i`` is sent (the step's window marks).
    """
    lags = []
    for i, (task_id, text) in enumerate(items):
        due = start + offsets[i]
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
            now = time.perf_counter()
        if on_index is not None:
            on_index(i)
            now = time.perf_counter()
        lags.append(now - due)
        sent_at[task_id] = now
        send(task_id, text)
    return lags


def _wait_for(reader: ResultReader, task_ids: list[str], stall_s: float) -> list[str]:
    """Wait until every task has finished, or none has for ``stall_s``; the unfinished ones."""
    pending = list(task_ids)
    last_progress = time.monotonic()
    while pending:
        if reader.error is not None:
            raise RuntimeError(f"the result reader stopped: {reader.error!r}") from reader.error
        still = [t for t in pending if not reader.finished(t)]
        if len(still) < len(pending):
            last_progress = time.monotonic()
        pending = still
        if pending and time.monotonic() - last_progress > stall_s:
            break
        if pending:
            time.sleep(_POLL_S)
    return pending


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, int]:
    return (
        int(after["ok_calls"]) - int(before["ok_calls"]),
        int(after["total_inputs"]) - int(before["total_inputs"]),
    )


def run_step(
    result: StepResult,
    *,
    send: Send,
    reader: ResultReader,
    stats: Stats,
    reset_stats: Callable[[], object],
    texts: list[str],
    id_prefix: str,
    warmup_texts: int,
    measured_texts: int,
    stall_s: float,
    arrivals: str = "uniform",
    seed: int = 0,
) -> list[str]:
    """Warm up, then measure ``measured_texts`` sent at ``result.target_rate``; the task ids.

    ``arrivals`` and ``seed`` space the sends (see ``arrival_offsets``).

    The measured window runs from the first measured send to the last. The API calls and the
    achieved rate (results of any text of the step arriving per second) are counted over that
    window; the latency of each measured text counts however long it takes to arrive, until
    no result has arrived for ``stall_s``.
    """
    rate = result.target_rate
    count = warmup_texts + measured_texts
    items = [(f"{id_prefix}{i}", texts[i % len(texts)]) for i in range(count)]
    sent_at: dict[str, float] = {}
    window: dict[str, Any] = {}

    def mark(i: int) -> None:
        # A stats read is one local HTTP round trip (~1 ms): taken in the sending loop so
        # the window starts exactly at the first measured text.
        if i == warmup_texts:
            window["stats"] = stats()
            window["start"] = time.perf_counter()

    reset_stats()
    offsets = arrival_offsets(count, rate, arrivals, seed)
    lags = paced_send(send, items, offsets, time.perf_counter() + 0.01, sent_at, mark)
    end = time.perf_counter()
    calls, inputs = _stats_delta(window["stats"], stats())
    result.load_avg = os.getloadavg()[0]
    task_ids = [task_id for task_id, _ in items]
    measured = task_ids[warmup_texts:]
    unfinished = _wait_for(reader, task_ids, stall_s)

    start = window["start"]
    result.texts = len(measured)
    first, last = sent_at[measured[0]], sent_at[measured[-1]]
    result.offered_rate = (len(measured) - 1) / (last - first) if last > first else math.nan
    in_window = sum(1 for t in task_ids if start <= reader.done_at.get(t, -1.0) <= end)
    result.achieved_rate = in_window / (end - start) if end > start else math.nan
    result.calls, result.inputs = calls, inputs
    result.latencies_ms = [
        (reader.done_at[t] - sent_at[t]) * 1000 for t in measured if t in reader.done_at
    ]
    result.failed = sum(1 for t in measured if t in reader.failed)
    result.lost = sum(1 for t in measured if not reader.finished(t))
    # The warm-up may still settle (a first send connects); only measured sends count.
    result.lag_p99_ms = percentile(lags[warmup_texts:], 99) * 1000
    result.lag_max_ms = max(lags[warmup_texts:]) * 1000
    if unfinished:
        result.error = (
            f"{len(unfinished)} of {count} texts had no result after {stall_s:g} s without progress"
        )
    return task_ids


def drain_rate(
    reader: ResultReader,
    task_ids: list[str],
    stall_s: float,
) -> tuple[float, int]:
    """Texts/s of a backlog of ``task_ids`` drained by workers; also how many never finished.

    The rate is taken between the 10th and the 90th percentile completion, so neither a
    worker's start-up nor the last stragglers count.
    """
    unfinished = _wait_for(reader, task_ids, stall_s)
    times = sorted(reader.done_at[t] for t in task_ids if t in reader.done_at)
    if len(times) < 10:
        return math.nan, len(unfinished)
    low, high = round(len(times) * 0.1), round(len(times) * 0.9) - 1
    span = times[high] - times[low]
    return ((high - low) / span if span > 0 else math.nan), len(unfinished)
