"""Wait for many results of Celery's Redis result backend on one pub/sub connection.

Celery's ``AsyncResult`` waits through a promise and one subscription per result. Here:

- ``ResultFeed`` follows a changing set of tasks, for a producer that keeps a sliding
  window of texts in flight (``embed-file``): ``add`` subscribes to more result channels
  (one ``SUBSCRIBE`` per ``read_chunk`` keys) and reads, with ``MGET``, those stored before
  the subscription took effect; ``poll`` hands back results as they are published; the
  channels of results taken (or ``drop``\\ped) are unsubscribed ``read_chunk`` at a time, so
  a long backfill keeps a bounded subscription.
- ``ResultWaiter`` waits for one fixed set (``wait_all``, ``embed_texts``): a feed of it.

Every pending key is read again (``MGET``) each second, in case a publish was missed (a
reconnect). Values are decoded with the backend's own ``decode_result``, so a failure
comes back as the same typed exception ``AsyncResult.get()`` raises. A RETRY is not an
outcome: the task runs again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from celery import Celery, states

__all__ = [
    "DEFAULT_READ_CHUNK",
    "ResultFeed",
    "ResultWaiter",
    "supports_bulk_wait",
]

DEFAULT_READ_CHUNK = 500
"""Result keys per ``MGET``, ``SUBSCRIBE``, ``UNSUBSCRIBE`` or ``DEL`` (a result is ~8 KB)."""

_SWEEP_INTERVAL_S = 1.0  # re-read pending results this often, in case a publish was missed


def supports_bulk_wait(app: Celery) -> bool:
    """True when ``app``'s result backend is Celery's Redis backend (or a subclass)."""
    from celery.backends.redis import RedisBackend

    return isinstance(app.backend, RedisBackend)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ResultFeed:
    """The results of a changing set of ``app``'s tasks, as they finish, on one connection.

    Not thread-safe: one thread adds, polls and drops.
    """

    def __init__(self, app: Celery, *, read_chunk: int = DEFAULT_READ_CHUNK) -> None:
        if not supports_bulk_wait(app):
            raise ValueError("ResultFeed needs Celery's Redis result backend")
        if read_chunk < 1:
            raise ValueError(f"read_chunk must be positive, got {read_chunk}")
        self.backend = app.backend
        self.read_chunk = read_chunk
        self._pending: dict[bytes, str] = {}  # result key -> task id
        self._ready: list[tuple[str, Any]] = []
        self._finished_keys: list[bytes] = []  # still subscribed, no longer awaited
        self._pubsub: Any = None
        self._last_sweep = time.monotonic()

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
        if not keys:
            return
        if self._pubsub is None:
            self._pubsub = self.backend.client.pubsub(ignore_subscribe_messages=True)
        for chunk in _chunks(keys, self.read_chunk):
            self._pubsub.subscribe(*chunk)
        # Results stored before the subscription took effect are read, not awaited.
        self._read(keys)

    def poll(self, timeout_s: float) -> list[tuple[str, Any]]:
        """``(task_id, outcome)`` of tasks finished since the last poll, first come first.

        The outcome is the result, or the task's exception. Waits up to ``timeout_s``
        seconds for the first one; returns at once with what is ready.
        """
        deadline = time.monotonic() + timeout_s
        while not self._ready and self._pending:
            now = time.monotonic()
            if now - self._last_sweep >= _SWEEP_INTERVAL_S:
                self._read(list(self._pending))
                continue
            if now >= deadline:
                break
            wait_s = min(deadline - now, _SWEEP_INTERVAL_S - (now - self._last_sweep))
            message = self._pubsub.get_message(timeout=wait_s)
            while message is not None:
                if message.get("type") == "message":
                    self._take(message["channel"], message["data"])
                message = self._pubsub.get_message(timeout=0.0)
        ready, self._ready = self._ready, []
        self._unsubscribe_finished()
        return ready

    def drop(self, task_ids: Iterable[str]) -> None:
        """Stop waiting for ``task_ids`` (say, past their deadline)."""
        for task_id in task_ids:
            key = self.backend.get_key_for_task(task_id)
            if self._pending.pop(key, None) is not None:
                self._finished_keys.append(key)
        self._unsubscribe_finished()

    def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the stored results of ``task_ids``, ``read_chunk`` keys per ``DEL``."""
        forget_results(self.backend, task_ids, self.read_chunk)

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
            self._pubsub.unsubscribe(*chunk)


class ResultWaiter:
    """Waits for a fixed set of ``app``'s results at once: one ``ResultFeed`` per ``wait``.

    ``read_chunk`` keys go in one ``MGET``. Nothing is kept between calls to ``wait``.
    """

    def __init__(self, app: Celery, *, read_chunk: int = DEFAULT_READ_CHUNK) -> None:
        if not supports_bulk_wait(app):
            raise ValueError("ResultWaiter needs Celery's Redis result backend")
        self.app = app
        self.backend = app.backend
        self.read_chunk = read_chunk

    def wait(
        self,
        task_ids: Sequence[str],
        timeout_s: float,
        on_ready: Callable[[int, Any], None] = lambda _i, _value: None,
    ) -> dict[int, Any]:
        """Outcomes by position in ``task_ids``: the result, or the task's exception.

        Waits up to ``timeout_s`` seconds; positions still pending then are absent.
        ``on_ready(position, outcome)`` hears of each as it is read.
        """
        positions = {task_id: i for i, task_id in enumerate(task_ids)}
        outcomes: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        feed = ResultFeed(self.app, read_chunk=self.read_chunk)
        try:
            feed.add(task_ids)
            while True:
                for task_id, outcome in feed.poll(max(0.0, deadline - time.monotonic())):
                    position = positions[task_id]
                    outcomes[position] = outcome
                    on_ready(position, outcome)
                if not feed.waiting or time.monotonic() >= deadline:
                    break
        finally:
            feed.close()  # drops the whole set's subscription with its connection
        return outcomes

    def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the stored results of ``task_ids``, ``read_chunk`` keys per ``DEL``."""
        forget_results(self.backend, task_ids, self.read_chunk)


def forget_results(backend: Any, task_ids: Sequence[str], read_chunk: int) -> None:
    """Delete the stored results of ``task_ids`` from ``backend``, ``read_chunk`` per ``DEL``."""
    keys = [backend.get_key_for_task(task_id) for task_id in task_ids]
    for chunk in _chunks(keys, read_chunk):
        backend.client.delete(*chunk)
