"""Await many tasks' results on ONE Redis pub/sub connection per event loop, with no threads.

Celery's Redis result backend stores a task's result under its result key
(``celery-task-meta-<id>``) and publishes the same bytes on a channel named after that key;
here one Lua script does both (``worker/celery_ext/result_backend.py``). An
:class:`AsyncResultWaiter`
subscribes to those channels on one connection and multiplexes every waiting coroutine over
it: a thousand waiting texts cost one socket, one reader task and a dict entry each.

**Nothing is missed.** Every subscribe confirmation Redis sends back is followed by a
``MGET`` of the confirmed keys. A result stored before the subscription took effect is read
from its key; one stored after is delivered on the channel. redis-py re-subscribes on its own
after a reconnect, and the confirmations of that re-subscription trigger the same ``MGET``,
so results published while the connection was down are read too. Behind Sentinel
(``worker.redis_client.async_redis_from_url``) that reconnect asks the Sentinels for the
master, so after a failover the subscription moves to the new master the same way: a
result published on the old master just before it died is read from its key if a replica
had it, and is otherwise written again by the worker that reruns the unacked text.

**One reader per connection.** asyncio streams allow one reading coroutine, and the reader
task is always reading. redis-py's own health check reads from the connection of the
coroutine that sends a command while nothing is subscribed (a ``PING``, then its reply):
after an idle spell longer than ``health_check_interval`` the next ``SUBSCRIBE`` did that
while the reader was reading, and failed the request with ``RuntimeError: readuntil()
called while another coroutine is already waiting``. So the waiter subscribes to a channel
of its own (the *anchor*, on which nothing but its own wake-ups is published) before any
result channel and never leaves it: the connection never returns to the unsubscribed
state, redis-py's health check is then sent by the reader and read by it, and the other
coroutines only ever write ``SUBSCRIBE``/``UNSUBSCRIBE``, and only on a live connection.

**A broken subscription is made anew, never blamed on a task.** Once the subscription
exists, a failure of it (a read, a ``SUBSCRIBE``, an ``UNSUBSCRIBE``) never fails a
waiting coroutine, whose text was published and is being embedded: the reader drops the
connection, subscribes again to the anchor and every channel still awaited, and the
confirmations read every stored result (``MGET``), retrying 0.2 s apart, doubling to 5 s.
A waiter then gets its result, or :class:`EmbeddingResultTimeoutError` at its deadline.

**Clean cancellation.** A waiting coroutine that is cancelled or times out removes its
futures from the registry and unsubscribes from every channel nobody else waits on.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from celery import states
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from producers.core import Failover, as_str
from worker.errors import (
    EmbeddingError,
    EmbeddingResultStoreUnavailableError,
    EmbeddingResultTimeoutError,
)

__all__ = ["AsyncResultWaiter"]

log = logging.getLogger(__name__)

# How long the reader blocks for a message before it checks the connection's health again.
DEFAULT_POLL_S = 5.0
# First and longest pause before the reader tries a failed Redis again.
DEFAULT_RETRY_S = 0.2
MAX_RETRY_S = 5.0
# Messages handled before the reader yields to the loop: decoding a 1,536-float result takes
# tens of microseconds, and a burst of a thousand must not stall other coroutines.
_DRAIN_MAX = 64
# Keys per MGET: 256 results of ~8 KB keep one reply near 2 MB.
_MGET_MAX = 256
# The anchor channel's name, before a per-waiter id (see the module's docstring).
ANCHOR_PREFIX = "embedding-result-waiter:"

Decode = Callable[[bytes], dict[str, Any]]


class AsyncResultWaiter:
    """A registry of futures keyed by result key, fed by one pub/sub subscription.

    The asyncio counterpart of ``worker.celery_ext.result_feed.SyncResultWaiter``: many
    coroutines of one loop share it, where the sync one serves one blocking call.

    ``client`` is a ``redis.asyncio.Redis`` on the result backend's database; ``key_for``
    maps a task id to its result key (and channel); ``decode`` turns stored bytes into
    Celery's result meta, with a failure's exception already rebuilt (Celery's
    ``backend.decode_result``). The waiter owns ``client`` and closes it. Use it from one
    event loop only. ``subscribe_waits`` are the pauses, in seconds, before each new attempt
    at the first SUBSCRIBE, while no subscription exists (behind Sentinel, enough to outlast
    a failover; by default none: the first failure raises). ``poll_s`` (5 s) is how long the
    reader waits for a message before it checks the connection again; ``retry_s`` (0.2 s)
    the first pause before it makes a failed subscription anew, doubling to 5 s.
    """

    def __init__(
        self,
        client: Redis,
        *,
        key_for: Callable[[str], str],
        decode: Decode,
        poll_s: float = DEFAULT_POLL_S,
        retry_s: float = DEFAULT_RETRY_S,
        subscribe_waits: Sequence[float] = (),
    ) -> None:
        self._client = client
        self._subscribe_waits = tuple(subscribe_waits)
        self._key_for = key_for
        self._decode = decode
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._waiters: dict[str, list[asyncio.Future[Any]]] = {}
        # Keys whose subscription Redis confirmed but whose stored value is not read yet.
        self._unchecked: set[str] = set()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        # Serialises SUBSCRIBE/UNSUBSCRIBE and the reader's making of a new subscription: the
        # first command opens the connection, and two coroutines opening it at once would
        # each take one.
        self._command_lock = asyncio.Lock()
        self._anchor = ANCHOR_PREFIX + uuid.uuid4().hex
        # Set when the subscription failed: the reader makes it anew, and until then nobody
        # else sends commands on it.
        self._broken = False

    @property
    def waiting_keys(self) -> frozenset[str]:
        """Result keys that at least one coroutine awaits right now."""
        return frozenset(self._waiters)

    @property
    def subscribed_channels(self) -> frozenset[str]:
        """Channels redis-py holds subscribed (an UNSUBSCRIBE leaves once Redis confirms it)."""
        if self._pubsub is None:
            return frozenset()
        channels = {as_str(channel) for channel in self._pubsub.channels}
        channels.discard(self._anchor)
        return frozenset(channels)

    async def wait(self, task_ids: Sequence[str], timeout_s: float) -> list[Any]:
        """The results of ``task_ids``, in order, within ``timeout_s`` seconds.

        A task that failed re-raises its error, rebuilt as Celery's ``AsyncResult.get`` does
        (the first in order of those failed when the wait ends). Raises
        :class:`EmbeddingResultTimeoutError` when the time is up, and
        :class:`EmbeddingResultStoreUnavailableError` when no subscription exists yet and Redis
        cannot be reached to make one; a subscription that fails later is made anew while the
        waits go on.
        """
        loop = asyncio.get_running_loop()
        keys = [self._key_for(task_id) for task_id in task_ids]
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in keys]
        new_keys = self._register(keys, futures)
        deadline = loop.time() + timeout_s
        try:
            if new_keys:
                # Only the subscribing is bounded by cancellation: redis-py may swallow the
                # cancel of a command it is sending (and then retry), and a timeout scope
                # whose one cancel was swallowed never fires again. The wait below is
                # bounded by asyncio.wait's own timer instead, which always fires.
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._subscribe(new_keys)
                except TimeoutError:
                    pass  # the wait below finds what is already stored, or times out
            done, pending = await asyncio.wait(
                futures,
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_EXCEPTION,
            )
            for future in futures:  # in order: the first failure among those done wins
                if future in done and not future.cancelled() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            if pending:
                raise EmbeddingResultTimeoutError(
                    f"no result for {len(pending)} of {len(keys)} texts within "
                    f"{timeout_s:g} s; they may still finish and can be read later by their "
                    "ids (task_ids)",
                    task_ids=task_ids,
                )
            return [future.result() for future in futures]
        finally:
            await self._unsubscribe(self._release(keys, futures))

    async def aclose(self) -> None:
        """Stop the reader and close the subscription and ``client``; pending waits end.

        The reader also closes them when it is cancelled another way, e.g. by
        ``asyncio.run`` cancelling every task as its loop shuts down.
        """
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        else:
            await self._close_connections()

    # -- registry -----------------------------------------------------------------------

    def _register(self, keys: Sequence[str], futures: Sequence[asyncio.Future[Any]]) -> list[str]:
        new_keys = []
        for key, future in zip(keys, futures, strict=True):
            waiting = self._waiters.get(key)
            if waiting is None:
                self._waiters[key] = waiting = []
                new_keys.append(key)
            waiting.append(future)
        return new_keys

    def _release(self, keys: Sequence[str], futures: Sequence[asyncio.Future[Any]]) -> list[str]:
        """Forget ``futures``; return the keys that nobody waits on any more."""
        unwatched = []
        for key, future in zip(keys, futures, strict=True):
            if future.done():
                if not future.cancelled():
                    future.exception()  # retrieved: no "exception never retrieved" at GC
            else:
                future.cancel()
            waiting = self._waiters.get(key)
            if waiting is None:
                continue
            waiting.remove(future)
            if not waiting:
                del self._waiters[key]
                self._unchecked.discard(key)
                unwatched.append(key)
        return unwatched

    def _deliver(self, key: str, payload: bytes | str) -> None:
        waiting = self._waiters.get(key)
        if not waiting:
            return
        try:
            meta = self._decode(payload if isinstance(payload, bytes) else payload.encode())
        except Exception as exc:  # a corrupt result fails its waiters instead of the reader
            self._settle(waiting, None, EmbeddingError(f"unreadable result under {key}: {exc}"))
            return
        status = meta.get("status")
        if status not in states.READY_STATES:
            return  # RETRY and the like: the task is not finished
        result = meta.get("result")
        if status == states.SUCCESS:
            self._settle(waiting, result, None)
        elif isinstance(result, BaseException):
            self._settle(waiting, None, result)
        else:
            self._settle(waiting, None, EmbeddingError(f"task ended {status}: {result!r}"))

    @staticmethod
    def _settle(
        futures: Iterable[asyncio.Future[Any]], result: Any, error: BaseException | None
    ) -> None:
        for future in futures:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    # -- Redis --------------------------------------------------------------------------

    async def _subscribe(self, keys: list[str]) -> None:
        if self._reader is not None and not self._reader.done():
            await self._subscribe_more(keys)
            return
        plan = Failover(self._subscribe_waits, retry_if=lambda exc: isinstance(exc, RedisError))
        while True:
            try:
                async with self._command_lock:
                    self._broken = False
                    if self._pubsub is None:
                        self._pubsub = self._client.pubsub()
                    # The anchor first: the connection must never be without a subscription.
                    await self._pubsub.subscribe(self._anchor, *keys)
                break
            except RedisError as exc:
                step = plan.failed(exc)
                if step is None:
                    raise EmbeddingResultStoreUnavailableError(
                        f"could not subscribe to the results of {len(keys)} texts: Redis is "
                        f"unreachable ({type(exc).__name__})"
                    ) from exc
                # redis-py records channels only once SUBSCRIBE went out: send it again.
                await asyncio.sleep(step.wait_s)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="embedding-result-reader")

    async def _subscribe_more(self, keys: list[str]) -> None:
        """SUBSCRIBE ``keys`` on the reader's connection; on failure leave them to the reader."""
        async with self._command_lock:
            pubsub = self._pubsub
            if self._broken or pubsub is None:
                return  # the reader's new subscription takes every awaited key
            if not _connected(pubsub):
                # Connecting means reading the handshake's replies, which only the reader may.
                self._broken = True
            else:
                try:
                    await pubsub.subscribe(*keys)
                    return
                except Exception as exc:  # the text was published: never fail its waiter
                    self._broken = True
                    log.warning(
                        "subscribing to %d result channels failed (%s: %s); making the "
                        "subscription anew",
                        len(keys),
                        type(exc).__name__,
                        exc,
                    )
        await self._wake_reader()

    async def _wake_reader(self) -> None:
        """Make the reader's blocking read return now, so it sees ``_broken`` at once."""
        try:
            await self._client.publish(self._anchor, b"")
        except Exception as exc:  # a dead connection wakes the reader by itself
            log.debug("could not wake the result reader: %s", exc)

    async def _unsubscribe(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            async with self._command_lock:
                pubsub = self._pubsub
                # A new subscription takes only the awaited keys; and connecting is the
                # reader's job (see _subscribe_more).
                if self._broken or pubsub is None or not _connected(pubsub):
                    return
                await pubsub.unsubscribe(*keys)
        except Exception as exc:
            # The reader unsubscribes a channel whose message finds no waiter, so a channel
            # left behind here costs one ignored message at most.
            log.warning("could not unsubscribe %d result channels: %s", len(keys), exc)

    async def _read(self) -> None:
        """The one reader: deliver messages, and read stored results after confirmations."""
        try:
            await self._read_forever()
        finally:
            await self._close_connections()

    async def _read_forever(self) -> None:
        delay = self._retry_s
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # A read below swallowed the cancellation (fakeredis does); stop anyway.
                raise asyncio.CancelledError
            try:
                if self._broken:
                    await self._subscribe_anew()
                await self._read_burst()
                delay = self._retry_s
                await asyncio.sleep(0)  # let other coroutines run between bursts
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the reader must outlive any one failure
                log.warning(
                    "result subscription failed (%s: %s); subscribing anew in %.1f s",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._broken = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)

    async def _read_burst(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        message = await pubsub.get_message(timeout=self._poll_s)
        handled = 0
        stale: list[str] = []
        while message is not None:
            self._on_message(message, stale)
            handled += 1
            if handled >= _DRAIN_MAX:
                break
            message = await pubsub.get_message(timeout=0)
        if stale:
            await self._unsubscribe(stale)
        if self._unchecked:
            await self._read_stored()

    async def _subscribe_anew(self) -> None:
        """Replace the subscription: a new connection, the anchor and every awaited channel.

        Their confirmations read every stored result, so what was published while the old
        one was failing is not missed.
        """
        async with self._command_lock:
            old, self._pubsub = self._pubsub, self._client.pubsub()
            if old is not None:
                try:
                    await old.aclose()
                except Exception as exc:
                    log.debug("closing the failed result subscription: %s", exc)
            await self._pubsub.subscribe(self._anchor, *self._waiters)
            self._broken = False
        log.info("result subscription made anew for %d awaited texts", len(self._waiters))

    def _on_message(self, message: dict[str, Any], stale: list[str]) -> None:
        kind = message["type"]
        if message["channel"] is not None and as_str(message["channel"]) == self._anchor:
            return  # a wake-up, or the anchor's own confirmation
        if kind == "subscribe":
            key = as_str(message["channel"])
            if key in self._waiters:
                self._unchecked.add(key)
        elif kind == "message":
            key = as_str(message["channel"])
            if key in self._waiters:
                self._deliver(key, message["data"])
            elif self._pubsub is not None and message["channel"] in self._pubsub.channels:
                stale.append(key)

    async def _read_stored(self) -> None:
        keys = [key for key in self._unchecked if key in self._waiters]
        for start in range(0, len(keys), _MGET_MAX):
            chunk = keys[start : start + _MGET_MAX]
            values = await self._client.mget(chunk)
            # Discarded only once read: a failed MGET leaves the keys for the next attempt.
            self._unchecked.difference_update(chunk)
            for key, value in zip(chunk, values, strict=True):
                if value is not None:
                    self._deliver(key, value)
        self._unchecked.intersection_update(self._waiters)

    async def _close_connections(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        try:
            if pubsub is not None:
                await pubsub.aclose()
            await self._client.aclose()
        except (RedisError, OSError) as exc:
            log.warning("closing the result subscription failed: %s", exc)


def _connected(pubsub: PubSub) -> bool:
    connection = pubsub.connection
    return connection is not None and bool(connection.is_connected)
