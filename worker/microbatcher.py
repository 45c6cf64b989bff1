"""The per-process micro-batcher: single texts from many task threads, grouped into calls.

Each Celery task submits its one text and waits on a future. A dispatcher thread sends a
call when ``batch_size`` distinct texts of one model wait, when the flush policy says a
partial batch may leave (worker/flush_policy.py), or ``flush_interval_s`` after the first
of them began to wait, and keeps at most ``pool_size`` calls in flight. While every slot is
busy texts keep arriving, so under load calls leave full. A call thread that finishes sends
the next due batch itself, and a results thread stores the finished call's vectors and
wakes its tasks meanwhile, so under load a slot goes from one call to the next without
waiting.

Identical texts waiting together, or arriving while one is in a call, cost one input
(worker/waiting.py). With a ``VectorCache``, a batch's texts are looked up before it leaves
and hits complete without a call; the call's vectors are stored for next time.

With a ``BudgetGate`` (the cluster's shared rate-limit budget), a due batch leaves only
once the budget admits it. Its texts wait here meanwhile, not as Celery retries, so the
batch keeps filling and calls stay full while the limit holds; a 429 pauses the cluster and
puts the call's texts back at the head of the line.

Lanes (docs/lanes.md): each text carries its lane. A batch takes interactive texts first, so
an interactive text goes into the next call that leaves, taking the place of a bulk text,
which heads the call after; the budget serves a batch holding an interactive text first too.

With ``store_vectors`` (the result backend's batched write, from ``worker.runtime``), a
call's results are written in one round trip before its tasks wake, and each text's
``TextFuture.stored_ahead`` tells its task that Celery need not write that result again.

With ``revoked`` (the fleet's revoke list, worker/revocation.py), every call's texts are
checked in one round trip before it leaves: a revoked text is taken out and its task told
(``TextRevoked``), so no call carries it, however long it had waited here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from worker import metrics
from worker.budget import BudgetGate
from worker.budget.admission import BudgetAdmission, Outcome
from worker.embeddings.batcher import EmbeddingBatcher
from worker.errors import EmbeddingError, EmbeddingRateLimitError
from worker.flush_policy import ArrivalGaps, FlushPolicy, batch_is_due
from worker.names import LANE_BULK, LANE_INTERACTIVE, LANES
from worker.revocation import TextRevoked
from worker.settings import DEFAULT_BULK_FLOOR_SHARE
from worker.vector_cache import VectorCache
from worker.waiting import Batch, Waiting, WaitingTexts, floor_every

__all__ = ["MicroBatcher", "MicroBatcherClosed"]

log = logging.getLogger(__name__)


class MicroBatcherClosed(RuntimeError):
    """Raised by ``submit`` after ``close``: the worker is shutting down."""


# Stores (task id, vector) pairs of one call in one step; see ``MicroBatcher``.
# Stores a call's (task id, vector) pairs in one step; False when it stored nothing.
StoreVectors = Callable[[list[tuple[str, list[float]]]], bool]
# The task ids among those given that were revoked; see ``MicroBatcher``.
RevokedAmong = Callable[[list[str]], set[str]]
# The vectors already stored as SUCCESS for those of the given task ids that have one.
StoredAmong = Callable[[list[str]], dict[str, list[float]]]


class TextFuture(Future[list[float]]):
    """The future a task waits on for its text's vector.

    ``stored_ahead`` is True once the call's batched write (``store_vectors``) stored this
    text's SUCCESS, before the future resolved: the task then tells Celery not to store it
    again. The flag travels with the text, so nothing is remembered per process.
    """

    stored_ahead = False


# Arrival estimators kept before quiet ones are dropped: more models than one worker serves.
_ARRIVALS_KEPT = 64


class MicroBatcher:
    """Groups submitted texts into calls of ``batcher.config.batch_size``, one model each.

    ``store_vectors``, when given, receives the vectors of each call's texts submitted with
    a ``task_id`` before their futures resolve, so a call's results can be written in one
    step; when it returns True their futures say ``stored_ahead``; if it raises or returns
    False, the futures resolve anyway and each task stores its own.
    ``gate``, when given, admits every call against the cluster's shared budget; ``cache``
    serves texts embedded before. ``flush_policy`` says when a partial batch leaves.
    ``bulk_floor_share`` is the share of calls bulk texts keep while interactive ones
    keep arriving (docs/lanes.md).
    ``revoked`` names the revoked task ids among a call's; those texts leave the call and
    their futures raise ``TextRevoked`` (if it raises, the call's texts fail with its error).
    ``stored`` gives the vectors already stored as SUCCESS among a call's task ids: a text
    delivered again after its result was stored (its ack was lost, say, in a Redis restart)
    gets that vector and leaves the call, instead of being paid for twice (if it raises,
    the call goes out whole). ``clock`` is monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        batcher: EmbeddingBatcher,
        *,
        flush_interval_s: float,
        store_vectors: StoreVectors | None = None,
        gate: BudgetGate | None = None,
        cache: VectorCache | None = None,
        flush_policy: FlushPolicy = FlushPolicy.NAGLE,
        revoked: RevokedAmong | None = None,
        bulk_floor_share: float = DEFAULT_BULK_FLOOR_SHARE,
        clock: Callable[[], float] = time.monotonic,
        stored: StoredAmong | None = None,
    ) -> None:
        self.batcher = batcher
        self._revoked = revoked
        self._stored = stored
        self._store_vectors = store_vectors
        self._gate = gate
        self._cache = cache
        self.batch_size = batcher.config.batch_size
        self.flush_interval_s = flush_interval_s
        self.flush_policy = flush_policy
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting = WaitingTexts(self.batch_size, floor_every(bulk_floor_share))
        self._in_flight = 0  # calls under way; the flush policy reads it
        self._arrivals: dict[str, ArrivalGaps] = {}  # per model; the flush policy reads it
        self._closing = False
        self._stopping = threading.Event()
        # Ends a wait for budget early: the first interactive text arrived (its batch asks at
        # once, in its lane), or the worker is stopping.
        self._admission_wake = threading.Event()
        self._admission: BudgetAdmission | None = None
        if gate is not None:
            self._admission = BudgetAdmission(batcher, gate, stopping=self._stopping, clock=clock)
        self._lane_waits = {lane: metrics.LANE_WAIT.labels(lane=lane) for lane in LANES}
        self._slots = threading.Semaphore(batcher.config.pool_size)
        self._calls = ThreadPoolExecutor(
            max_workers=batcher.config.pool_size, thread_name_prefix="embeddings-call"
        )
        # Stores a call's results and wakes its tasks while the call thread sends the next
        # call (docs/benchmark.md: a few ms of every call cycle otherwise).
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
        return self._waiting.pending

    def submit(
        self,
        text: str,
        model: str | None = None,
        task_id: str | None = None,
        lane: str = LANE_INTERACTIVE,
    ) -> TextFuture:
        """Queue one validated text in ``lane``; the future resolves to its vector or a
        typed error."""
        future = TextFuture()
        key = model or self.batcher.config.model
        with self._cond:
            if self._closing:
                raise MicroBatcherClosed("the worker is shutting down")
            now = self._clock()
            predictive = self.flush_policy is FlushPolicy.PREDICTIVE
            if predictive:  # only that policy reads arrival gaps: no per-text cost otherwise
                self._observe_arrival(key, now)
            # The first interactive text to wait changes the lane the next batch asks in.
            wake_admission = (
                lane == LANE_INTERACTIVE
                and self._admission is not None
                and not self._waiting.has_interactive(key)
            )
            queued = self._waiting.add(key, Waiting(text, future, now, task_id, lane=lane))
            metrics.PENDING_TEXTS.set(self._waiting.pending)
            # Wake the dispatcher only when this text changes what it waits for: a first text
            # (it starts the flush timer), a full batch, or a batch the policy now finds due.
            # It only waits when no queue is full, so every queue passes through exactly
            # batch_size. A wake-up per text cost a thread hand-off per text
            # (docs/benchmark.md).
            if queued and (
                queued == 1 or queued == self.batch_size or (predictive and self._is_due(key, now))
            ):
                self._cond.notify()
        if wake_admission:
            self._admission_wake.set()
        return future

    def _observe_arrival(self, model: str, now: float) -> None:
        # Callers hold self._cond.
        arrivals = self._arrivals.get(model)
        if arrivals is None:
            # Model names come from task arguments: forget quiet ones (losing nothing, see
            # ArrivalGaps.is_quiet) so that many names cannot grow this without end.
            if len(self._arrivals) >= _ARRIVALS_KEPT:
                for quiet in [m for m, a in self._arrivals.items() if a.is_quiet(now)]:
                    del self._arrivals[quiet]
            arrivals = self._arrivals[model] = ArrivalGaps(self.flush_interval_s)
        arrivals.observe(now)

    def close(self, timeout_s: float | None = None) -> None:
        """Send what waits, let calls in flight finish, then stop threads and pools."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._stopping.set()  # a wait for budget ends now; its texts go back to the queue
        self._admission_wake.set()
        self._dispatcher.join(timeout_s)
        self._calls.shutdown(wait=True)
        # Only once no call can hand over another result.
        self._completions.shutdown(wait=True)
        self.batcher.close()
        if self._gate is not None:
            self._gate.budget.close()
        if self._cache is not None:
            self._cache.close()

    def _dispatch_forever(self) -> None:
        while True:
            # Hold a free slot before choosing a batch, so texts that arrive while every
            # slot is busy still join the next call.
            self._slots.acquire()
            try:
                batch = self._take_batch(block=True)
            except Exception:
                # A bug here must not stop every later text of this process from leaving.
                log.exception("the embeddings dispatcher failed to take a batch")
                self._slots.release()
                self._stopping.wait(0.1)
                continue
            if batch is None:
                self._slots.release()
                return
            try:
                self._calls.submit(self._call, batch)
            except RuntimeError as exc:  # executor already shut down
                self._end_call(batch)
                self._slots.release()
                _fail(batch.all_entries(), MicroBatcherClosed(str(exc)))

    def _take_batch(self, *, block: bool) -> Batch | None:
        """The next due batch, admitted by the budget if there is one.

        ``block``: wait until one is due, and return None only once closing and drained.
        Otherwise return None at once when nothing is due, or another thread is admitting.
        """
        while True:
            if block and not self._wait_until_due():
                return None
            if self._admission is None:
                batch = self._admit_due()
            elif self._admission.lock.acquire(blocking=block):
                try:
                    batch = self._admit_due()
                finally:
                    self._admission.lock.release()
            else:
                return None
            if batch is not None or not block:
                return batch

    def _wait_until_due(self) -> bool:
        """Block until some batch is due; False once closing with nothing waiting."""
        with self._cond:
            while True:
                if not self._waiting:
                    if self._closing:
                        return False
                    self._cond.wait()
                    continue
                if self._due_model() is not None:
                    return True
                deadline = self._waiting.oldest_since() + self.flush_interval_s
                self._cond.wait(max(0.0, deadline - self._clock()))

    def _due_model(self) -> str | None:
        # Callers hold self._cond. A full batch first, then the oldest due one; each model's
        # distinct texts are counted once (a scan of its queue).
        now = self._clock()
        due = None
        for model in self._waiting.models():
            distinct = self._waiting.distinct(model)
            if distinct == self.batch_size:
                return model
            if due is None and self._is_due(model, now, distinct):
                due = model
        return due

    def _is_due(self, model: str, now: float, distinct: int | None = None) -> bool:
        # Callers hold self._cond and know ``model`` has texts waiting.
        arrivals = self._arrivals.get(model)
        return batch_is_due(
            self.flush_policy,
            waiting=self._waiting.distinct(model) if distinct is None else distinct,
            batch_size=self.batch_size,
            waited_s=now - self._waiting.oldest_since_of(model),
            flush_interval_s=self.flush_interval_s,
            in_flight=self._in_flight,
            next_arrival_in_s=None if arrivals is None else arrivals.next_in_s(now),
            closing=self._closing,
        )

    def _admit_due(self) -> Batch | None:
        # Callers hold the admission lock when there is a budget. Texts stay queued while
        # the budget says wait, so a batch that was due half-full leaves full once admitted,
        # and an interactive text arriving meanwhile joins it at the front.
        started = self._clock()
        while True:
            self._admission_wake.clear()
            with self._cond:
                model = self._due_model()
                if model is None:
                    return None
                head = self._waiting.head(model)
                unchecked = self._waiting.unchecked(model, head) if self._cache else []
                if self._admission is None and not unchecked:
                    return self._pop_batch(model, 0)
                interactive = self._waiting.has_interactive(model, head)
                riders = interactive and self._waiting.has_bulk(model, head)
            if unchecked:
                self._serve_from_cache(model, unchecked)
                continue
            assert self._admission is not None
            lane = LANE_INTERACTIVE if interactive else LANE_BULK
            verdict = self._admission.ask(model, head, lane, serves_bulk=riders)
            if verdict.error is not None:
                self._fail_queued(model, verdict.error)
                continue
            if verdict.admitted:
                with self._cond:
                    batch = (
                        self._pop_batch(model, verdict.tokens)
                        if self._waiting.head(model)
                        else None
                    )
                if batch is None:  # failed or taken meanwhile: the admission goes unused
                    continue
                waited_s = self._clock() - started
                for _ in batch.texts:
                    metrics.BUDGET_WAIT.observe(waited_s)
                return batch
            self._fail_overdue(model)
            self._admission_wake.wait(verdict.wait_s)
            if self._stopping.is_set():
                self._fail_queued(model, MicroBatcherClosed("the worker is shutting down"))

    def _pop_batch(self, model: str, tokens: int) -> Batch:
        # Callers hold self._cond. The batch is a call under way from here on.
        batch = self._waiting.pop_batch(model)
        batch.tokens = tokens
        self._in_flight += 1
        metrics.PENDING_TEXTS.set(self._waiting.pending)
        now = self._clock()
        for waiting in batch.all_entries():
            self._lane_waits[waiting.lane].observe(now - waiting.since)
        return batch

    def _end_call(self, batch: Batch) -> list[Waiting]:
        """``batch``'s call is over; return its entries, late joiners included."""
        with self._cond:
            self._waiting.finish(batch)
            self._in_flight -= 1
            if self._in_flight == 0 and self._waiting:
                self._cond.notify()  # the flush policy may send a partial batch now
        return batch.all_entries()

    def _serve_from_cache(self, model: str, texts: list[str]) -> None:
        assert self._cache is not None
        vectors = self._cache.get_many(model, texts)
        hits = {text: v for text, v in zip(texts, vectors, strict=True) if v is not None}
        with self._cond:
            self._waiting.mark_checked(model, texts)
            served = self._waiting.take(model, set(hits))
            metrics.PENDING_TEXTS.set(self._waiting.pending)
        if served:
            metrics.INPUTS_SAVED.labels(reason="cache").inc(len(served))
            outcomes: list[Outcome] = [hits[w.text] for w in served]
            self._completions.submit(self._complete, served, outcomes)

    def _fail_overdue(self, model: str) -> None:
        """Texts that waited for budget past the bound become Celery retries."""
        assert self._admission is not None
        with self._cond:
            overdue = self._waiting.pop_older_than(model, self._admission.overdue_before())
            metrics.PENDING_TEXTS.set(self._waiting.pending)
        _fail(overdue, self._admission.overdue_error(model))

    def _fail_queued(self, model: str, exc: BaseException) -> None:
        """Resolve every text of ``model`` still waiting with ``exc``."""
        with self._cond:
            queued = self._waiting.pop_model(model)
            metrics.PENDING_TEXTS.set(self._waiting.pending)
        _fail(queued, exc)

    def _call(self, batch: Batch) -> None:
        # Runs on a call thread holding one slot. When the call ends and another batch is
        # already due, this thread sends it at once with the same slot: handing the slot
        # back to the dispatcher costs two thread wake-ups (docs/benchmark.md).
        try:
            next_batch: Batch | None = batch
            while next_batch is not None:
                self._embed(next_batch)
                next_batch = self._take_batch(block=False)
        finally:
            self._slots.release()

    def _embed(self, batch: Batch) -> None:
        outcomes: list[Outcome] | EmbeddingRateLimitError
        if self._revoked is not None and not self._drop_revoked(batch):
            return
        if self._stored is not None and not self._serve_stored(batch):
            return
        try:
            if self._admission is None:
                outcomes = self.batcher.embed_isolated(batch.texts, batch.model)
            else:
                outcomes = self._admission.call(batch)
        except BaseException as exc:
            log.exception("embeddings call crashed")
            _fail(self._end_call(batch), exc)
            return
        if isinstance(outcomes, EmbeddingRateLimitError):
            self._wait_again_after_429(batch, outcomes)
            return
        entries = self._end_call(batch)
        by_text = dict(zip(batch.texts, outcomes, strict=True))
        saved = len(entries) - len(batch.texts)
        if saved:
            metrics.INPUTS_SAVED.labels(reason="duplicate").inc(saved)
        self._completions.submit(self._complete, entries, [by_text[w.text] for w in entries], batch)

    def _serve_stored(self, batch: Batch) -> bool:
        """Give texts whose SUCCESS is stored that vector; False when nothing is left to send."""
        assert self._stored is not None
        ids = [w.task_id for w in batch.all_entries() if w.task_id is not None]
        try:
            stored = self._stored(ids) if ids else {}
        except Exception as exc:
            # Unknown: the call goes out whole (a duplicate at worst, never a lost text).
            log.debug("could not read stored results (%s); the call goes out whole", exc)
            return True
        if not stored:
            return True
        with self._cond:
            served: list[Waiting] = []
            for text in list(batch.texts):
                entries = batch.entries[text]
                if not all(w.task_id in stored for w in entries):
                    continue  # another task still needs this text embedded
                served.extend(entries)
                batch.texts.remove(text)
                del batch.entries[text]
                self._waiting.forget(batch.model, text)
        if served:
            metrics.INPUTS_SAVED.labels(reason="stored").inc(len(served))
            outcomes: list[Outcome] = [stored[w.task_id] for w in served if w.task_id]
            self._completions.submit(self._complete, served, outcomes)
        if batch.texts:
            return True
        self._end_call(batch)
        return False

    def _drop_revoked(self, batch: Batch) -> bool:
        """Take ``batch``'s revoked texts out of it; False when nothing is left to send."""
        assert self._revoked is not None
        ids = [w.task_id for w in batch.all_entries() if w.task_id is not None]
        try:
            revoked = self._revoked(ids) if ids else set()
        except Exception as exc:
            # Unknown whether a text was revoked: none is sent; each task handles the
            # store's outage as it would a failed result write (back to the queue).
            log.warning("could not read the revoke list (%s); the call is not sent", exc)
            _fail(self._end_call(batch), exc)
            return False
        if not revoked:
            return True
        with self._cond:
            dropped: list[Waiting] = []
            for text in list(batch.texts):
                entries = batch.entries[text]
                gone = [w for w in entries if w.task_id in revoked]
                if not gone:
                    continue
                dropped.extend(gone)
                entries[:] = [w for w in entries if w.task_id not in revoked]
                if not entries:
                    # No task waits for it any more: it leaves the call, and a later
                    # identical text queues for a call of its own.
                    batch.texts.remove(text)
                    del batch.entries[text]
                    self._waiting.forget(batch.model, text)
        metrics.INPUTS_SAVED.labels(reason="revoked").inc(len(dropped))
        _fail(dropped, TextRevoked(f"{len(dropped)} texts were revoked before their call"))
        if batch.texts:
            return True
        self._end_call(batch)
        return False

    def _wait_again_after_429(self, batch: Batch, exc: EmbeddingRateLimitError) -> None:
        assert self._admission is not None
        give_up, again = self._admission.after_rate_limit(batch.model, self._end_call(batch), exc)
        _fail(give_up, exc)
        with self._cond:
            if self._closing:
                _fail(again, MicroBatcherClosed("the worker is shutting down"))
                return
            self._waiting.requeue(batch.model, again)
            metrics.PENDING_TEXTS.set(self._waiting.pending)
            self._cond.notify()

    def _complete(
        self, entries: list[Waiting], outcomes: list[Outcome], batch: Batch | None = None
    ) -> None:
        try:
            self._store(entries, outcomes)
            for waiting, outcome in zip(entries, outcomes, strict=True):
                if isinstance(outcome, EmbeddingError):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)
        except BaseException as exc:
            log.exception("completing an embeddings call crashed")
            _fail(entries, exc)
        if batch is not None and self._cache is not None:
            # After the tasks are woken: the cache is for next time, not for them.
            fresh = {w.text: o for w, o in zip(entries, outcomes, strict=True)}
            self._cache.put_many(
                batch.model, [(t, v) for t, v in fresh.items() if not isinstance(v, EmbeddingError)]
            )

    def _store(self, entries: list[Waiting], outcomes: list[Outcome]) -> None:
        if self._store_vectors is None:
            return
        stored: list[tuple[Waiting, str, list[float]]] = [
            (waiting, waiting.task_id, outcome)
            for waiting, outcome in zip(entries, outcomes, strict=True)
            if waiting.task_id is not None and not isinstance(outcome, EmbeddingError)
        ]
        if not stored:
            return
        try:
            written = self._store_vectors([(task_id, vector) for _, task_id, vector in stored])
        except Exception as exc:
            log.warning("storing %d results in one step failed (%s); each task stores its own",
                        len(stored), exc)  # fmt: skip
            return
        if written:
            for waiting, _, _ in stored:
                if isinstance(waiting.future, TextFuture):
                    waiting.future.stored_ahead = True


def _fail(entries: list[Waiting], exc: BaseException) -> None:
    for waiting in entries:
        if not waiting.future.done():
            waiting.future.set_exception(exc)
