"""The per-process micro-batcher: single texts from many task threads, grouped into calls.

Each Celery task submits its one text and waits on a future. A dispatcher thread sends a
call when ``batch_size`` texts of one model wait, or ``flush_interval_s`` after the first of
them began to wait, and keeps at most ``pool_size`` calls in flight. While every slot is busy
texts keep arriving, so under load calls leave full. A call thread that finishes sends the
next due batch itself, and a results thread stores the finished call's vectors and wakes
its tasks meanwhile, so under load a slot goes from one call to the next without waiting.

With a ``BudgetGate`` (the cluster's shared rate-limit budget), a due batch leaves only
once the budget admits it. Its texts wait here meanwhile, not as Celery retries, so the
batch keeps filling and calls stay full while the limit holds; a 429 pauses the cluster and
puts the call's texts back at the head of the line.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from worker import metrics
from worker.budget import BudgetGate, estimate_tokens
from worker.embeddings.batcher import EmbeddingBatcher
from worker.errors import EmbeddingBudgetWaitError, EmbeddingError, EmbeddingRateLimitError
from worker.flush_policy import FlushPolicy, batch_is_due

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
    rate_limited: int = 0  # 429s met so far; past the gate's bound, the text retries in Celery


# (model, texts, tokens charged to the shared budget)
_Batch = tuple[str, list[_Waiting], int]


class MicroBatcher:
    """Groups submitted texts into calls of ``batcher.config.batch_size``, one model each.

    ``store_vectors``, when given, receives the vectors of each call's texts submitted with
    a ``task_id`` before their futures resolve, so a call's results can be written in one
    step; if it raises, the futures resolve anyway and each task stores its own.
    ``gate``, when given, admits every call against the cluster's shared budget.
    ``flush_policy`` says when a partial batch leaves (worker/flush_policy.py).
    ``clock`` is monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        batcher: EmbeddingBatcher,
        *,
        flush_interval_s: float,
        store_vectors: StoreVectors | None = None,
        gate: BudgetGate | None = None,
        flush_policy: FlushPolicy = FlushPolicy.NAGLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batcher = batcher
        self._store_vectors = store_vectors
        self._gate = gate
        # One thread per process waits for budget; the others would only ask Redis again.
        self._admitting = threading.Lock()
        self._stopping = threading.Event()
        self.batch_size = batcher.config.batch_size
        self.flush_interval_s = flush_interval_s
        self.flush_policy = flush_policy
        self._in_flight = 0  # calls under way; the flush policy reads it
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
        self._stopping.set()  # a wait for budget ends now; its texts go back to the queue
        self._dispatcher.join(timeout_s)
        self._calls.shutdown(wait=True)
        # Only once no call can hand over another result.
        self._completions.shutdown(wait=True)
        self.batcher.close()
        if self._gate is not None:
            self._gate.budget.close()

    def _dispatch_forever(self) -> None:
        while True:
            # Hold a free slot before choosing a batch, so texts that arrive while every
            # slot is busy still join the next call.
            self._slots.acquire()
            try:
                taken = self._take_batch(block=True)
            except Exception:
                # A bug here must not stop every later text of this process from leaving.
                log.exception("the embeddings dispatcher failed to take a batch")
                self._slots.release()
                self._stopping.wait(0.1)
                continue
            if taken is None:
                self._slots.release()
                return
            try:
                self._calls.submit(self._call, taken)
            except RuntimeError as exc:  # executor already shut down
                self._call_ended()
                self._slots.release()
                _fail(taken[1], MicroBatcherClosed(str(exc)))

    def _take_batch(self, *, block: bool) -> _Batch | None:
        """The next due batch, admitted by the budget if there is one.

        ``block``: wait until one is due, and return None only once closing and drained.
        Otherwise return None at once when nothing is due, or another thread is admitting.
        """
        while True:
            if block and not self._wait_until_due():
                return None
            if self._gate is None:
                taken = self._admit_due()
            elif self._admitting.acquire(blocking=block):
                try:
                    taken = self._admit_due()
                finally:
                    self._admitting.release()
            else:
                return None
            if taken is not None or not block:
                return taken

    def _wait_until_due(self) -> bool:
        """Block until some batch is due; False once closing with nothing waiting."""
        with self._cond:
            while True:
                if not self._waiting:
                    if self._closing:
                        return False
                    self._cond.wait()
                    continue
                if self._due_model()[0] is not None:
                    return True
                oldest = min(q[0].since for q in self._waiting.values())
                self._cond.wait(max(0.0, oldest + self.flush_interval_s - self._clock()))

    def _admit_due(self) -> _Batch | None:
        # Callers hold self._admitting. Texts stay queued while the budget says wait, so a
        # batch that was due half-full leaves full once the budget admits it.
        started = self._clock()
        while True:
            with self._cond:
                model, queue = self._due_model()
                if model is None:
                    return None
                if self._gate is None:
                    return model, self._pop_batch(model, queue), 0
                head = list(itertools.islice(queue, self.batch_size))
            tokens = sum(estimate_tokens(waiting.text) for waiting in head)
            try:
                admission = self._gate.try_admit(model, tokens)
            except EmbeddingBudgetWaitError as exc:
                self._fail_model(model, exc)
                continue
            if admission.admitted:
                with self._cond:
                    queue = self._waiting.get(model, deque())
                    batch = self._pop_batch(model, queue) if queue else []
                if not batch:  # failed or taken meanwhile: the admission goes unused
                    continue
                waited_s = self._clock() - started
                for _ in batch:
                    metrics.BUDGET_WAIT.observe(waited_s)
                return model, batch, tokens
            if admission.wait_s > self._gate.max_wait_s:
                error = EmbeddingBudgetWaitError(
                    f"the shared rate-limit budget asks {model} calls to wait "
                    f"{admission.wait_s:.1f}s, more than EMBEDDINGS_LIMITER_MAX_WAIT_S "
                    f"({self._gate.max_wait_s:g}s)"
                )
                error.retry_after_s = admission.wait_s
                self._fail_model(model, error)
                continue
            self._fail_overdue(model)
            if self._stopping.wait(self._gate.sleep_s(admission)):
                self._fail_model(model, MicroBatcherClosed("the worker is shutting down"))

    def _fail_overdue(self, model: str) -> None:
        """Texts that waited for budget past the bound become Celery retries."""
        assert self._gate is not None
        cutoff = self._clock() - self._gate.max_wait_s
        with self._cond:
            queue = self._waiting.get(model, deque())
            overdue = []
            while queue and queue[0].since < cutoff:
                overdue.append(queue.popleft())
            if not queue and model in self._waiting:
                del self._waiting[model]
            self._pending -= len(overdue)
            metrics.PENDING_TEXTS.set(self._pending)
        _fail(
            overdue,
            EmbeddingBudgetWaitError(
                f"waited more than EMBEDDINGS_LIMITER_MAX_WAIT_S ({self._gate.max_wait_s:g}s) "
                f"for the shared rate-limit budget of {model}"
            ),
        )

    def _fail_model(self, model: str, exc: BaseException) -> None:
        """Resolve every text of ``model`` still waiting with ``exc``."""
        with self._cond:
            queue = self._waiting.pop(model, deque())
            self._pending -= len(queue)
            metrics.PENDING_TEXTS.set(self._pending)
        _fail(list(queue), exc)

    def _pop_batch(self, model: str, queue: deque[_Waiting]) -> list[_Waiting]:
        # Callers hold self._cond. The batch is a call under way from here on.
        batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
        if not queue:
            del self._waiting[model]
        self._pending -= len(batch)
        self._in_flight += 1
        metrics.PENDING_TEXTS.set(self._pending)
        return batch

    def _call_ended(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._in_flight == 0 and self._waiting:
                self._cond.notify()  # the flush policy may send a partial batch now

    def _due_model(self) -> tuple[str | None, deque[_Waiting]]:
        # Callers hold self._cond. A full batch first, then the oldest due one.
        for model, queue in self._waiting.items():
            if len(queue) >= self.batch_size:
                return model, queue
        now = self._clock()
        for model, queue in self._waiting.items():
            if batch_is_due(
                self.flush_policy,
                waiting=len(queue),
                batch_size=self.batch_size,
                waited_s=now - queue[0].since,
                flush_interval_s=self.flush_interval_s,
                in_flight=self._in_flight,
                closing=self._closing,
            ):
                return model, queue
        return None, deque()

    def _call(self, taken: _Batch) -> None:
        # Runs on a call thread holding one slot. When the call ends and another batch is
        # already due, this thread sends it at once with the same slot: handing the slot
        # back to the dispatcher costs two thread wake-ups (docs/benchmark.md).
        try:
            next_batch: _Batch | None = taken
            while next_batch is not None:
                try:
                    self._embed(*next_batch)
                finally:
                    self._call_ended()
                next_batch = self._take_batch(block=False)
        finally:
            self._slots.release()

    def _embed(self, model: str, batch: list[_Waiting], tokens: int) -> None:
        texts = [w.text for w in batch]
        outcomes: list[_Outcome] | None
        try:
            if self._gate is None:
                outcomes = self.batcher.embed_isolated(texts, model)
            else:
                outcomes = self._embed_in_budget(model, batch, tokens)
        except BaseException as exc:
            log.exception("embeddings call crashed")
            _fail(batch, exc)
            return
        if outcomes is not None:
            self._completions.submit(self._complete, batch, outcomes)

    def _embed_in_budget(
        self, model: str, batch: list[_Waiting], tokens: int
    ) -> list[_Outcome] | None:
        """One admitted call; None when a 429 sent its texts back to wait for budget."""
        assert self._gate is not None
        texts = [w.text for w in batch]
        try:
            call = self.batcher.client.embed(texts, model)
        except EmbeddingRateLimitError as exc:
            self._wait_again_after_429(model, batch, exc)
            return None
        except EmbeddingError as exc:
            # Split calls that isolate a rejected text go out unmetered: they are rare.
            return self.batcher.isolate(texts, model, exc)
        self._gate.after_call(model, tokens, call)
        return list(call.embeddings)

    def _wait_again_after_429(
        self, model: str, batch: list[_Waiting], exc: EmbeddingRateLimitError
    ) -> None:
        assert self._gate is not None
        for waiting in batch:
            waiting.rate_limited += 1
        self._gate.after_rate_limit(model, exc, max(w.rate_limited for w in batch))
        # A text that keeps meeting 429s becomes a Celery retry, whose countdown honours them.
        give_up = [w for w in batch if w.rate_limited > self._gate.max_rate_limited]
        again = [w for w in batch if w.rate_limited <= self._gate.max_rate_limited]
        _fail(give_up, exc)
        with self._cond:
            if self._closing:
                _fail(again, MicroBatcherClosed("the worker is shutting down"))
                return
            if not again:
                return
            queue = self._waiting.setdefault(model, deque())
            queue.extendleft(reversed(again))
            self._pending += len(again)
            metrics.PENDING_TEXTS.set(self._pending)
            self._cond.notify()

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


def _fail(batch: list[_Waiting], exc: BaseException) -> None:
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(exc)
