"""Wait for many results of Celery's Redis result backend on one pub/sub connection.

Celery's ``AsyncResult`` waits through a promise and one subscription per result. Here:

- ``ResultFeed`` follows a changing set of tasks, for a producer that keeps a sliding
  window of texts in flight (``embed-file``): ``add`` subscribes to more result channels
  (one ``SUBSCRIBE`` per ``read_chunk`` keys) and reads, with ``MGET``, those stored before
  the subscription took effect; ``poll`` hands back results as they are published; the
  channels of results taken (or ``drop``\\ped) are unsubscribed ``read_chunk`` at a time, so
  a long backfill keeps a bounded subscription.
- ``SyncResultWaiter`` waits for one fixed set (``wait_all``, ``embed_texts``): a feed of it,
  blocking its thread; ``producers.waiter.AsyncResultWaiter`` is the asyncio counterpart.

Every pending key is read again (``MGET``) each second, in case a publish was missed (a
reconnect). Values are decoded with the backend's own ``decode_result``, so a failure
comes back as the same typed exception ``AsyncResult.get()`` raises. A RETRY is not an
outcome: the task runs again.

**A Redis blip is ridden out, as the asyncio waiter (``producers.waiter``) does.** A failed
``SUBSCRIBE``, read, ``MGET`` or ``UNSUBSCRIBE`` never reaches the caller: the feed drops its
connection and, on each later ``poll``, makes the subscription anew (every awaited channel)
and reads every awaited key, retrying ``retry_s`` apart (doubling to ``MAX_RETRY_S``) until
Redis answers. The texts were published and are being embedded; with an append-only Redis a
restart loses none of them, and their results are read once it is back. ``outage`` holds
the error while Redis does not answer, so a caller whose deadline passes can say Redis,
not the texts, was the trouble (``SyncResultWaiter.wait`` raises
``EmbeddingResultStoreUnavailableError`` then).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from celery import Celery, states
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from worker.errors import EmbeddingResultStoreUnavailableError

__all__ = [
    "DEFAULT_READ_CHUNK",
    "ResultFeed",
    "SyncResultWaiter",
    "supports_bulk_wait",
]

DEFAULT_READ_CHUNK = 500
"""Result keys per ``MGET``, ``SUBSCRIBE``, ``UNSUBSCRIBE`` or ``DEL`` (a result is ~8 KB)."""

log = logging.getLogger(__name__)

_SWEEP_INTERVAL_S = 1.0  # re-read pending results this often, in case a publish was missed
DEFAULT_RETRY_S = 0.2
"""First pause, in seconds, before a feed whose Redis failed tries it again; doubles."""
MAX_RETRY_S = 2.0
"""Longest pause between two attempts at a failed Redis (seconds)."""

# What a Redis that went away or answers nothing raises through redis-py (and kombu).
_REDIS_FAILURES = (RedisError, OperationalError, OSError)


def supports_bulk_wait(app: Celery) -> bool:
    """True when ``app``'s result backend is Celery's Redis backend (or a subclass)."""
    from celery.backends.redis import RedisBackend

    return isinstance(app.backend, RedisBackend)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ResultFeed:
    """The results of a changing set of ``app``'s tasks, as they finish, on one connection.

    Not thread-safe: one thread adds, polls and drops. ``retry_s`` is the first pause
    before a failed Redis is tried again (doubling to ``MAX_RETRY_S``); ``sleep`` waits it
    (injectable for tests).
    """

    def __init__(
        self,
        app: Celery,
        *,
        read_chunk: int = DEFAULT_READ_CHUNK,
        retry_s: float = DEFAULT_RETRY_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not supports_bulk_wait(app):
            raise ValueError("ResultFeed needs Celery's Redis result backend")
        if read_chunk < 1:
            raise ValueError(f"read_chunk must be positive, got {read_chunk}")
        self.backend = app.backend
        self.read_chunk = read_chunk
        self._retry_s = retry_s
        self._sleep = sleep
        self._pending: dict[bytes, str] = {}  # result key -> task id
        self._ready: list[tuple[str, Any]] = []
        self._finished_keys: list[bytes] = []  # still subscribed, no longer awaited
        self._pubsub: Any = None
        self._last_sweep = time.monotonic()
        self._outage: BaseException | None = None
        self._next_try = 0.0  # monotonic time of the next attempt at a failed Redis
        self._delay = retry_s

    @property
    def outage(self) -> BaseException | None:
        """The Redis error that broke the subscription, while it is not made anew; else None."""
        return self._outage

    @property
    def waiting(self) -> int:
        """How many added tasks have no outcome yet (neither polled nor dropped)."""
        return len(self._pending)

    @property
    def subscribed(self) -> int:
        """How many result channels this feed listens to, unsubscribes sent excluded (bounded)."""
        if self._pubsub is None:
            return 0
        return len(set(self._pubsub.channels) - set(self._pubsub.pending_unsubscribe_channels))

    def add(self, task_ids: Sequence[str]) -> None:
        """Wait for ``task_ids`` too; those already stored are ready for the next ``poll``."""
        keys = []
        for task_id in task_ids:
            key = self.backend.get_key_for_task(task_id)
            if key not in self._pending:
                self._pending[key] = task_id
                keys.append(key)
        if not keys or self._outage is not None:
            return  # a broken subscription is made anew, with these keys, by ``poll``
        try:
            if self._pubsub is None:
                self._pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)
            for chunk in _chunks(keys, self.read_chunk):
                self._pubsub.subscribe(*chunk)
            # Results stored before the subscription took effect are read, not awaited.
            self._read(keys)
        except _REDIS_FAILURES as exc:
            self._broke(exc)

    def poll(self, timeout_s: float) -> list[tuple[str, Any]]:
        """``(task_id, outcome)`` of tasks finished since the last poll, first come first.

        The outcome is the result, or the task's exception. Waits up to ``timeout_s``
        seconds for the first one; returns at once with what is ready. A Redis failure is
        not raised: the subscription is made anew once Redis answers (``outage``).
        """
        deadline = time.monotonic() + timeout_s
        while not self._ready and self._pending:
            now = time.monotonic()
            if self._outage is not None:
                if now < self._next_try:
                    if now >= deadline:
                        break
                    self._sleep(min(self._next_try, deadline) - now)
                    continue
                self._subscribe_anew()
                if self._outage is not None and time.monotonic() >= deadline:
                    break
                continue
            try:
                self._poll_connected(now, deadline)
            except _REDIS_FAILURES as exc:
                self._broke(exc)
                continue
            if time.monotonic() >= deadline:
                break
        ready, self._ready = self._ready, []
        self._unsubscribe_finished()
        return ready

    def _poll_connected(self, now: float, deadline: float) -> None:
        if now - self._last_sweep >= _SWEEP_INTERVAL_S:
            self._read(list(self._pending))
            return
        if now >= deadline:
            return
        wait_s = min(deadline - now, _SWEEP_INTERVAL_S - (now - self._last_sweep))
        message = self._pubsub.get_message(timeout=wait_s)
        while message is not None:
            if message.get("type") == "message":
                self._take(message["channel"], message["data"])
            message = self._pubsub.get_message(timeout=0.0)

    def _broke(self, exc: BaseException) -> None:
        """Drop the connection after ``exc``; ``poll`` makes the subscription anew."""
        if self._outage is None:
            log.warning(
                "result subscription failed (%s: %s); making it anew once Redis answers",
                type(exc).__name__,
                exc,
            )
            self._delay = self._retry_s
        self._outage = exc
        self._next_try = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, MAX_RETRY_S)
        pubsub, self._pubsub = self._pubsub, None
        self._finished_keys.clear()  # the new connection subscribes awaited keys only
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception as close_exc:  # a dead socket may fail to close; it is gone
                log.debug("closing the failed result subscription: %s", close_exc)

    def _subscribe_anew(self) -> None:
        """Subscribe to every awaited channel on a new connection, then read every key.

        The ``MGET`` after the ``SUBSCRIBE`` finds what was stored while the old one failed.
        """
        keys = list(self._pending)
        try:
            self._pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)
            for chunk in _chunks(keys, self.read_chunk):
                self._pubsub.subscribe(*chunk)
            self._read(keys)
        except _REDIS_FAILURES as exc:
            self._broke(exc)
            return
        self._outage = None
        log.info("result subscription made anew for %d awaited texts", len(keys))

    def drop(self, task_ids: Iterable[str]) -> None:
        """Stop waiting for ``task_ids`` (say, past their deadline)."""
        for task_id in task_ids:
            key = self.backend.get_key_for_task(task_id)
            if self._pending.pop(key, None) is not None:
                self._finished_keys.append(key)
        self._unsubscribe_finished()

    def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the stored results of ``task_ids``, ``read_chunk`` keys per ``DEL``."""
        keys = [self.backend.get_key_for_task(task_id) for task_id in task_ids]
        for chunk in _chunks(keys, self.read_chunk):
            self.backend.client.delete(*chunk)

    def close(self) -> None:
        """Close the connection, and with it every subscription."""
        pubsub, self._pubsub = self._pubsub, None
        self._finished_keys.clear()
        if pubsub is not None:
            pubsub.close()

    def _take(self, key: bytes, payload: Any) -> None:
        if payload is None or key not in self._pending:
            return
        meta = self.backend.decode_result(payload)
        if meta["status"] not in states.READY_STATES:
            return  # a RETRY: the task runs again
        self._ready.append((self._pending.pop(key), meta["result"]))
        self._finished_keys.append(key)

    def _read(self, keys: list[bytes]) -> None:
        client = self.backend.client
        for chunk in _chunks(keys, self.read_chunk):
            for key, payload in zip(chunk, client.mget(chunk), strict=True):
                self._take(key, payload)
        self._last_sweep = time.monotonic()

    def _unsubscribe_finished(self) -> None:
        # Whole chunks only: channels still subscribed stay below ``waiting + read_chunk``.
        while self._pubsub is not None and len(self._finished_keys) >= self.read_chunk:
            chunk = self._finished_keys[: self.read_chunk]
            del self._finished_keys[: self.read_chunk]
            try:
                self._pubsub.unsubscribe(*chunk)
            except _REDIS_FAILURES as exc:
                self._broke(exc)


class SyncResultWaiter:
    """Waits for a fixed set of ``app``'s results at once: one ``ResultFeed`` per ``wait``.

    ``read_chunk`` keys go in one ``MGET``. Nothing is kept between calls to ``wait``.
    """

    def __init__(
        self,
        app: Celery,
        *,
        read_chunk: int = DEFAULT_READ_CHUNK,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not supports_bulk_wait(app):
            raise ValueError("SyncResultWaiter needs Celery's Redis result backend")
        self.app = app
        self.read_chunk = read_chunk
        self.sleep = sleep

    def wait(
        self,
        task_ids: Sequence[str],
        timeout_s: float,
        on_ready: Callable[[int, Any], None] = lambda _i, _value: None,
    ) -> dict[int, Any]:
        """Outcomes by position in ``task_ids``: the result, or the task's exception.

        Waits up to ``timeout_s`` seconds, through a Redis blip (``ResultFeed``);
        positions still pending then are absent. ``on_ready(position, outcome)`` hears of
        each as it is read. Raises ``EmbeddingResultStoreUnavailableError`` when the time
        is up while Redis does not answer: the missing texts may still finish, and can be
        read later by their ids.
        """
        positions = {task_id: i for i, task_id in enumerate(task_ids)}
        outcomes: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        feed = ResultFeed(self.app, read_chunk=self.read_chunk, sleep=self.sleep)
        try:
            feed.add(task_ids)
            while True:
                for task_id, outcome in feed.poll(max(0.0, deadline - time.monotonic())):
                    position = positions[task_id]
                    outcomes[position] = outcome
                    on_ready(position, outcome)
                if not feed.waiting or time.monotonic() >= deadline:
                    break
            outage = feed.outage if feed.waiting else None
        finally:
            feed.close()  # drops the whole set's subscription with its connection
        if outage is not None:
            raise EmbeddingResultStoreUnavailableError(
                f"no result for {len(task_ids) - len(outcomes)} of {len(task_ids)} texts "
                f"within {timeout_s:g}s: Redis does not answer ({type(outage).__name__}); they "
                "may still finish and can be read later by their ids"
            ) from outage
        return outcomes
