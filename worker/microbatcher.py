"""The per-process micro-batcher: single texts from many task threads, grouped into calls.

Each Celery task submits its one text and waits on a future. A dispatcher thread sends a
call when ``batch_size`` texts of one model wait, or ``flush_interval_s`` after the first of
them began to wait, and keeps at most ``pool_size`` calls in flight. While every slot is busy
texts keep arriving, so under load calls leave full. A call thread that finishes sends the
next due batch itself, and a results thread stores the finished call's vectors and wakes
its tasks meanwhile, so under load a slot goes from one call to the next without waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from worker import metrics
from worker.embeddings.batcher import EmbeddingBatcher
from worker.errors import EmbeddingError

__all__ = ["MicroBatcher", "MicroBatcherClosed"]

log = logging.getLogger(__name__)


class MicroBatcherClosed(RuntimeError):
    """Raised by ``submit`` after ``close``: the worker is shutting down."""


# One text's outcome from a call: its vector, or the error that text alone failed with.
_Outcome = list[float] | EmbeddingError
# Stores (task id, vector) pairs of one call in one step; see ``MicroBatcher``.
StoreVectors = Callable[[list[tuple[str, list[float]]]], object]


@dataclass
class _Waiting:
    text: str
    future: Future[list[float]]
    since: float = field(default=0.0)
    task_id: str | None = None


class MicroBatcher:
    """Groups submitted texts into calls of ``batcher.config.batch_size``, one model each.

    ``store_vectors``, when given, receives the vectors of each call's texts submitted with
    a ``task_id`` before their futures resolve, so a call's results can be written in one
    step; if it raises, the futures resolve anyway and each task stores its own.
    ``clock`` is monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        batcher: EmbeddingBatcher,
        *,
        flush_interval_s: float,
        store_vectors: StoreVectors | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batcher = batcher
        self._store_vectors = store_vectors
        self.batch_size = batcher.config.batch_size
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self._cond = threading.Condition()
        # model -> texts waiting, oldest first; OrderedDict keeps models in arrival order.
        self._waiting: OrderedDict[str, deque[_Waiting]] = OrderedDict()
        self._pending = 0
        self._closing = False
        self._slots = threading.Semaphore(batcher.config.pool_size)
        self._calls = ThreadPoolExecutor(
            max_workers=batcher.config.pool_size, thread_name_prefix="embeddings-call"
        )
        # Stores a call's results and wakes its tasks while the call thread sends the next
        # call: done on the call thread, that took ~3 ms of every ~59 ms call cycle.
        self._completions = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="embeddings-results"
        )
        self._dispatcher = threading.Thread(
            target=self._dispatch_forever, name="embeddings-dispatcher", daemon=True
        )
        self._dispatcher.start()

    @property
    def pending(self) -> int:
        """Texts waiting for a call (not yet sent)."""
        return self._pending

    def submit(
        self, text: str, model: str | None = None, task_id: str | None = None
    ) -> Future[list[float]]:
        """Queue one validated text; the future resolves to its vector or a typed error."""
        future: Future[list[float]] = Future()
        key = model or self.batcher.config.model
        with self._cond:
            if self._closing:
                raise MicroBatcherClosed("the worker is shutting down")
            queue = self._waiting.setdefault(key, deque())
            queue.append(_Waiting(text, future, self._clock(), task_id))
            self._pending += 1
            metrics.PENDING_TEXTS.set(self._pending)
            # Wake the dispatcher only when this text changes what it waits for: a first text
            # (it starts the flush timer) or a full batch. It only waits when no queue is full,
            # so every queue passes through exactly batch_size. Waking it for each text cost a
            # thread hand-off per text (py-spy: ~3% of a loaded worker's GIL samples).
            if len(queue) == 1 or len(queue) == self.batch_size:
                self._cond.notify()
        return future

    def close(self, timeout_s: float | None = None) -> None:
        """Send what waits, let calls in flight finish, then stop threads and the HTTP pool."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._dispatcher.join(timeout_s)
        self._calls.shutdown(wait=True)
        # Only once no call can hand over another result.
        self._completions.shutdown(wait=True)
        self.batcher.close()

    def _dispatch_forever(self) -> None:
        while True:
            # Hold a free slot before choosing a batch, so texts that arrive while every
            # slot is busy still join the next call.
            self._slots.acquire()
            taken = self._next_batch()
            if taken is None:
                self._slots.release()
                return
            model, batch = taken
            try:
                self._calls.submit(self._call, model, batch)
            except RuntimeError as exc:  # executor already shut down
                self._slots.release()
                _fail(batch, MicroBatcherClosed(str(exc)))

    def _next_batch(self) -> tuple[str, list[_Waiting]] | None:
        """Block until a batch is due; return it, or None once closing and drained."""
        with self._cond:
            while True:
                if not self._waiting:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                model, queue = self._due_model()
                if model is not None:
                    break
                oldest = min(q[0].since for q in self._waiting.values())
                self._cond.wait(max(0.0, oldest + self.flush_interval_s - self._clock()))
            return model, self._pop_batch(model, queue)

    def _pop_batch(self, model: str, queue: deque[_Waiting]) -> list[_Waiting]:
        # Callers hold self._cond.
        batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
        if not queue:
            del self._waiting[model]
        self._pending -= len(batch)
        metrics.PENDING_TEXTS.set(self._pending)
        return batch

    def _due_model(self) -> tuple[str | None, deque[_Waiting]]:
        now = self._clock()
        for model, queue in self._waiting.items():
            if len(queue) >= self.batch_size:
                return model, queue
        for model, queue in self._waiting.items():
            if self._closing or now - queue[0].since >= self.flush_interval_s:
                return model, queue
        return None, deque()

    def _call(self, model: str, batch: list[_Waiting]) -> None:
        # Runs on a call thread holding one slot. When the call ends and another batch is
        # already due, this thread sends it at once with the same slot. Handing the slot back
        # to the dispatcher, which then hands the batch to a call thread, costs two thread
        # wake-ups, each waiting for the GIL behind the task threads this call just woke:
        # 10-16 ms (p50) between a call's end and the next call's start, under load.
        try:
            while True:
                self._embed(model, batch)
                taken = self._take_due_batch()
                if taken is None:
                    return
                model, batch = taken
        finally:
            self._slots.release()

    def _embed(self, model: str, batch: list[_Waiting]) -> None:
        try:
            outcomes = self.batcher.embed_isolated([w.text for w in batch], model)
        except BaseException as exc:
            log.exception("embeddings call crashed")
            _fail(batch, exc)
            return
        self._completions.submit(self._complete, batch, outcomes)

    def _complete(self, batch: list[_Waiting], outcomes: list[_Outcome]) -> None:
        try:
            self._store(batch, outcomes)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, EmbeddingError):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)
        except BaseException as exc:
            log.exception("completing an embeddings call crashed")
            _fail(batch, exc)

    def _store(self, batch: list[_Waiting], outcomes: list[_Outcome]) -> None:
        if self._store_vectors is None:
            return
        vectors = [
            (waiting.task_id, outcome)
            for waiting, outcome in zip(batch, outcomes, strict=True)
            if waiting.task_id is not None and not isinstance(outcome, EmbeddingError)
        ]
        if not vectors:
            return
        try:
            self._store_vectors(vectors)
        except Exception as exc:
            log.warning("storing %d results in one step failed (%s); each task stores its own",
                        len(vectors), exc)  # fmt: skip

    def _take_due_batch(self) -> tuple[str, list[_Waiting]] | None:
        """A batch that is due now (full, flush interval over, or closing), without waiting."""
        with self._cond:
            model, queue = self._due_model()
            if model is None:
                return None
            return model, self._pop_batch(model, queue)


def _fail(batch: list[_Waiting], exc: BaseException) -> None:
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(exc)
