"""``embed-file``'s queue side: keep a window of texts in flight, refilled as results come in.

A fixed window (enqueue N texts, wait for all N, repeat) starves a fleet: the workers that
fetch first reserve most of the window (prefetch × concurrency messages each), the others
idle, and every window lasts as long as its slowest text. A ``QueueStream`` is a sliding
window instead: ``send`` enqueues a chunk of texts (one ``MULTI``/``EXEC`` per 500), and
``wait`` hands back outcomes as results are published, on one pub/sub connection
(``worker.celery_ext.result_feed.ResultFeed``), so the caller (``producers.cli.embed_items``)
sends the next chunk as soon as there is room, instead of when the whole window is done.

Durability is the same as per window: task ids come from the input; a chunk's new ids are
written to ``<output>.pending`` (fsynced) before its publish, and a Ctrl-C is held until a
publish is whole or not made; collected ids leave the sidecar, and their results leave
Redis, after their lines are written (in batches: at least every second, and on
``close``, Ctrl-C included). Memory is bounded by the window: the ids in flight, one
subscription of at most ``window + 500`` channels, and at most 500 collected ids not yet
flushed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import ResultSet
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from producers.client import enqueue_ids
from producers.lanes import LANE_BULK, check_lane
from worker.celery_ext.result_feed import ResultFeed, supports_bulk_wait
from worker.errors import EmbeddingPartialEnqueueError
from worker.settings import Settings
from worker.vector_cache import VectorCache

__all__ = [
    "DEFAULT_STALL_WARNING_S",
    "Outcome",
    "OutcomeSink",
    "PendingIds",
    "QueueStats",
    "QueueStream",
    "TextStream",
    "refill_size",
]

DEFAULT_STALL_WARNING_S = 30.0
_FLUSH_EVERY_S = 1.0  # collected ids leave the sidecar and Redis at least this often
_FLUSH_AT = 500  # … or once this many have been collected

Outcome = list[float] | str
"""A text's vector, or the message of why it has none."""

OutcomeSink = Callable[[int, Outcome], None]
"""``(position in its send, outcome)``: hears of each text of a ``send`` once."""


def refill_size(window: int) -> int:
    """Texts per ``send`` for a sliding ``window``: a quarter of it, at most 500.

    Small enough that a refill starts while three quarters of the window still run; large
    enough that a send (its ``MGET``, its sidecar ``fsync`` and its ``MULTI``/``EXEC``)
    costs little per text.
    """
    return max(1, min(500, window // 4))


class TextStream(Protocol):
    """The queue as a stream: texts go in with ``send``, outcomes come out as they finish."""

    @property
    def in_flight(self) -> int:
        """Texts sent whose outcome has not been handed out yet."""

    def send(
        self,
        texts: Sequence[str],
        timeout_s: float,
        on_outcome: OutcomeSink,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> None:
        """Enqueue ``texts``; each outcome goes to ``on_outcome`` (now, or from ``wait``).

        A text with no result ``timeout_s`` seconds after it was sent gets an error message.
        """

    def wait(self, max_wait_s: float = 1.0) -> None:
        """Hand out the outcomes ready, waiting up to ``max_wait_s`` s for the first."""

    def close(self) -> None:
        """Flush what was collected; the stream can be used again afterwards."""


class PendingIds:
    """Task ids enqueued but not yet collected, kept in a sidecar file (``<output>.pending``).

    Written before a publish, so an interrupted run's re-run waits for those tasks instead
    of enqueueing them again; an id leaves the file once its result is collected.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: set[str] = set()
        if path.exists():
            self.ids = {line.strip() for line in path.read_text().splitlines() if line.strip()}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, task_ids: Iterable[str]) -> None:
        new = [task_id for task_id in task_ids if task_id not in self.ids]
        if not new:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(f"{task_id}\n" for task_id in new))
            f.flush()
            os.fsync(f.fileno())
        self.ids.update(new)

    def discard(self, task_ids: Iterable[str]) -> None:
        before = len(self.ids)
        self.ids.difference_update(task_ids)
        if len(self.ids) == before:
            return
        if not self.ids:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{task_id}\n" for task_id in sorted(self.ids)))
        os.replace(tmp, self.path)


@dataclass
class QueueStats:
    """What the queue did for one run: texts enqueued and collected, and the seconds each took.

    ``enqueue_s`` is the time spent sending; ``collect_s`` the time spent waiting for
    results, so the collect rate is the fleet's, seen from here.
    """

    enqueued: int = 0
    enqueue_s: float = 0.0
    collected: int = 0
    collect_s: float = 0.0

    @property
    def enqueue_per_s(self) -> float:
        return self.enqueued / self.enqueue_s if self.enqueue_s > 0 else 0.0

    @property
    def collect_per_s(self) -> float:
        return self.collected / self.collect_s if self.collect_s > 0 else 0.0


@dataclass
class _Send:
    """One ``send``'s texts still in flight: task id -> position, and its deadline."""

    on_outcome: OutcomeSink
    deadline: float
    timeout_s: float
    positions: dict[str, int] = field(default_factory=dict)


class QueueStream:
    """A sliding window of texts through the Celery queue (see the module's docstring).

    With the workers' vector ``cache``, texts embedded before are read from it instead of
    enqueued (``on_cached`` hears how many per send). Given ``task_ids`` (derived from the
    input), a text whose task already has a stored result, or is in ``pending`` (enqueued
    by an earlier run, not yet collected), is waited for, not enqueued again.
    ``on_stall(seconds)`` hears, every ``stall_s`` seconds, that no result has come in for
    that long while texts are in flight; ``on_no_worker(message)`` hears, before the first
    send, that no worker answered a ping. ``stats`` adds up the enqueue and collect times.
    Texts go to ``lane``'s queue: bulk by default, so a backfill never delays a web app's
    texts (``"interactive"`` when a user waits for this file); a bad lane raises here.

    A result backend other than Redis is waited for a send at a time, oldest first.
    """

    def __init__(
        self,
        app: Celery,
        model: str | None = None,
        *,
        cache: VectorCache | None = None,
        on_cached: Callable[[int], None] = lambda _: None,
        stats: QueueStats | None = None,
        pending: PendingIds | None = None,
        on_stall: Callable[[float], None] | None = None,
        stall_s: float = DEFAULT_STALL_WARNING_S,
        on_no_worker: Callable[[str], None] | None = None,
        lane: str = LANE_BULK,
    ) -> None:
        self.app = app
        self.model = model
        self.lane = check_lane(lane)
        self.cache = cache
        # The model the workers key their cache by, read once: not from the environment per send.
        self._cache_model = (model or Settings.from_env().model) if cache is not None else ""
        self.on_cached = on_cached
        self.stats = stats
        self.pending = pending
        self.on_no_worker = on_no_worker
        self._feed = ResultFeed(app) if supports_bulk_wait(app) else None
        self._sends: deque[_Send] = deque()
        self._owner: dict[str, _Send] = {}
        self._collected: list[str] = []
        self._flushed_at = time.monotonic()
        self._watch = _StallWatch(on_stall, stall_s)

    @property
    def in_flight(self) -> int:
        return len(self._owner)

    def send(
        self,
        texts: Sequence[str],
        timeout_s: float,
        on_outcome: OutcomeSink,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> None:
        if self.on_no_worker is not None:
            _warn_if_no_worker(self.app, self.on_no_worker)
            self.on_no_worker = None
        cached: list[list[float] | None] = [None] * len(texts)
        if self.cache is not None and texts:
            cached = self.cache.get_many(self._cache_model, texts)
            self.on_cached(sum(vector is not None for vector in cached))
            for i, vector in enumerate(cached):
                if vector is not None:
                    on_outcome(i, vector)
        missing = [i for i, vector in enumerate(cached) if vector is None]
        if not missing:
            return
        given = None if task_ids is None else [task_ids[i] for i in missing]
        started = time.monotonic()
        ids, sent_now = self._enqueue([texts[i] for i in missing], given)
        now = time.monotonic()
        if self.stats is not None:
            self.stats.enqueued += sent_now
            self.stats.enqueue_s += now - started
        batch = _Send(on_outcome, now + timeout_s, timeout_s)
        for task_id, i in zip(ids, missing, strict=True):
            batch.positions[task_id] = i
            self._owner[task_id] = batch
        self._sends.append(batch)
        if self._feed is not None:
            self._feed.add(ids)
        self._watch.start()
        self._watch.moved()

    def wait(self, max_wait_s: float = 1.0) -> None:
        if not self._sends:
            return
        started = time.monotonic()
        wait_s = max(0.0, min(max_wait_s, self._sends[0].deadline - started))
        if self._feed is not None:
            for task_id, value in self._feed.poll(wait_s):
                self._deliver(task_id, _outcome(value), collected=True)
        else:
            self._join_oldest()
        if self.stats is not None:
            self.stats.collect_s += time.monotonic() - started
        self._expire()
        self._flush(force=False)

    def close(self) -> None:
        self._watch.stop()
        self._flush(force=True)

    def _enqueue(
        self, texts: Sequence[str], task_ids: Sequence[str] | None
    ) -> tuple[list[str], int]:
        """The texts' task ids, and how many of them were enqueued now."""
        if task_ids is None:
            task_ids = [str(uuid.uuid4()) for _ in texts]
            sent: set[str] = set()
        else:
            sent = self._already_sent(task_ids)
        todo = [i for i, task_id in enumerate(task_ids) if task_id not in sent]
        new_ids = [task_ids[i] for i in todo]
        if self.pending is not None:
            self.pending.add(new_ids)  # before the publish: a re-run must not send these again
        try:
            if todo:
                with _interrupt_deferred():
                    enqueue_ids(
                        [texts[i] for i in todo],
                        model=self.model,
                        app=self.app,
                        task_ids=new_ids,
                        lane=self.lane,
                    )
        except EmbeddingPartialEnqueueError as exc:
            if self.pending is not None:
                self.pending.discard(new_ids[exc.not_enqueued_from :])
            raise
        return list(task_ids), len(todo)

    def _already_sent(self, task_ids: Sequence[str]) -> set[str]:
        """Ids with a stored result (or state) in the backend, or pending from a past run."""
        pending = self.pending
        found = {task_id for task_id in task_ids if pending is not None and task_id in pending}
        if self._feed is not None:
            backend = self.app.backend
            for start in range(0, len(task_ids), 500):
                chunk = task_ids[start : start + 500]
                keys = [backend.get_key_for_task(task_id) for task_id in chunk]
                for task_id, payload in zip(chunk, backend.client.mget(keys), strict=True):
                    if payload is not None:
                        found.add(task_id)
        return found

    def _deliver(self, task_id: str, outcome: Outcome, *, collected: bool) -> None:
        batch = self._owner.pop(task_id, None)
        if batch is None:
            return
        position = batch.positions.pop(task_id)
        self._watch.moved()
        if collected:
            self._collected.append(task_id)
            if self.stats is not None:
                self.stats.collected += 1
        batch.on_outcome(position, outcome)

    def _expire(self) -> None:
        """Texts past their send's deadline get an error; the oldest sends leave when done."""
        now = time.monotonic()
        while self._sends and (not self._sends[0].positions or self._sends[0].deadline <= now):
            batch = self._sends.popleft()
            missed = list(batch.positions)
            if not missed:
                continue
            if self._feed is not None:
                self._feed.drop(missed)
            message = f"no result within {batch.timeout_s:g}s (the task may still finish)"
            for task_id in missed:
                self._deliver(task_id, message, collected=False)  # still queued: kept pending

    def _join_oldest(self) -> None:
        """Without a Redis result backend: Celery's own wait, for the oldest send."""
        batch = self._sends[0]
        if not batch.positions:
            return  # Celery's join_native cannot wait for nothing
        results = [self.app.AsyncResult(task_id) for task_id in batch.positions]
        timeout_s = max(0.0, batch.deadline - time.monotonic())
        with contextlib.suppress(CeleryTimeoutError):
            ResultSet(results, app=self.app).join_native(
                timeout=timeout_s,
                propagate=False,
                callback=lambda task_id, value: self._deliver(
                    task_id, _outcome(value), collected=True
                ),
            )

    def _flush(self, *, force: bool) -> None:
        """Collected ids leave the sidecar and their results leave Redis (the output has them).

        Even on Ctrl-C (``close``): a stale stored error must not answer a --retry-failed.
        Ids without a result yet stay pending: they may still finish, and a re-run waits.
        A Ctrl-C during a flush waits for its end: the ids have already left ``_collected``,
        so a flush cut short would leave their results in Redis for good.
        """
        collected = self._collected
        due = time.monotonic() - self._flushed_at >= _FLUSH_EVERY_S
        if not collected or not (force or due or len(collected) >= _FLUSH_AT):
            return
        with _interrupt_deferred():
            self._collected = []
            self._flushed_at = time.monotonic()
            if self.pending is not None:
                self.pending.discard(collected)
            with contextlib.suppress(RedisError, OperationalError):
                if self._feed is not None:
                    self._feed.forget(collected)
                else:
                    for task_id in collected:
                        self.app.AsyncResult(task_id).forget()


class _StallWatch:
    """Calls ``on_stall(seconds)`` every ``stall_s`` seconds without progress, from a thread."""

    def __init__(self, on_stall: Callable[[float], None] | None, stall_s: float) -> None:
        self.on_stall = on_stall
        self.stall_s = stall_s
        self.last = time.monotonic()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def moved(self) -> None:
        self.last = time.monotonic()

    def _run(self) -> None:
        warned = self.last
        while not self._stop.wait(min(1.0, self.stall_s)):
            now = time.monotonic()
            idle = now - self.last
            if idle >= self.stall_s and now - max(warned, self.last) >= self.stall_s:
                warned = now
                if self.on_stall is not None:
                    self.on_stall(idle)

    def start(self) -> None:
        """Start watching (once; a stopped watch starts again)."""
        if self.on_stall is None or self.thread is not None:
            return
        self.last = time.monotonic()
        self._stop.clear()
        self.thread = threading.Thread(target=self._run, name="embed-file-stall", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def _warn_if_no_worker(app: Celery, warn: Callable[[str], None]) -> None:
    """Warn when no worker answers a ping within a second (nothing would consume the queue)."""
    try:
        answers = app.control.ping(timeout=1.0, limit=1)
    except (RedisError, OperationalError, OSError):
        return  # the run itself reports a broker that cannot be reached
    if not answers:
        warn(
            "warning: no worker answered a ping within 1s; texts wait in the queue until "
            "a worker consumes it"
        )


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends: a publish is then known to be whole or not made."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        restore = previous if previous is not None else signal.default_int_handler
        signal.signal(signal.SIGINT, restore)
    if caught:
        raise KeyboardInterrupt


def _outcome(value: Any) -> Outcome:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return [float(x) for x in value]
