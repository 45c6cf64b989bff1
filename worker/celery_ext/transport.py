"""kombu's Redis transport, with a fetch that cannot lose a message when a worker is killed.

Stock kombu takes a message with ``BRPOP`` and only afterwards writes its copy to the
``unacked`` hash. A worker killed with SIGKILL (or by the OOM killer) between the two loses
the message for good: it is neither in the queue nor restorable (docs/reliability.md has the
fault suite's counts).

Here the wait and the take are split. ``BLMOVE q q RIGHT RIGHT`` blocks until the queue holds
something without taking it (moving the tail to the tail changes nothing), then one Lua
script (``fetch.lua``) pops up to ``MAX_FETCH`` messages and writes their unacked copies
atomically. A worker that dies at any point leaves each message either in the queue or in
``unacked``, where the visibility-timeout sweep puts it back.

More departures, each for the consumer's event loop, which bounds a worker's intake:

- acks are written once per loop turn, in one round trip (``AtomicFetchQoS``);
- an ack or requeue through a channel whose connection is already gone (after a Redis
  restart) is dropped with a warning instead of raising, which would stop the worker; the
  message stays unacked and the sweep redelivers it;
- a channel builds its synchronous ``redis.Redis`` client once per connection pool, not once
  per command as kombu's ``conn_or_acquire`` does (redis-py 8 builds its callback tables in
  every client's constructor).

And these for a full Redis (``maxmemory`` reached, ``noeviction``), which refuses every
``MULTI`` block and every command that may grow memory, such as ``BLMOVE``:

- acks are one pipeline of ``HDEL`` and ``ZREM`` without ``MULTI``, so a full Redis still
  frees what a worker acks; queue sizes (``LLEN``, asked by a starting worker), queue
  checks and deletes (mingle's reply queue) likewise;
- while Redis refuses the ``BLMOVE`` wait, the channel takes no new texts: it waits
  ``brpop_timeout`` on a ``BRPOP`` of a key nothing writes (allowed when full) and tries
  again, so texts stay in the queue instead of being embedded and then finding no room for
  their results;
- a queue binding that a full Redis refuses is left unrecorded
  (``worker.celery_ext.full_redis``);
- the visibility-timeout sweep (whose lock a full Redis refuses) skips its turn instead
  of stopping the worker at start-up;
- a requeue that a full Redis refuses is dropped locally, like one on a gone connection:
  the message stays in ``unacked`` and the sweep redelivers it once Redis has room.

Only the consuming side changes; messages, keys and acks are kombu's own, so stock and
patched workers can share a broker. Needs Redis 6.2 or later (``BLMOVE``).

Lanes (docs/lanes.md): the queues named in the ``queues_first`` transport option (the
interactive lane's) are polled before every other, whatever order the consumer added them in,
and the fetch script takes from the first non-empty list; every ``others_first_every``-th
fetch tries the other queues first, so that a saturated interactive lane leaves bulk its floor
share of a worker's intake. ``BLMOVE`` can wait on one list only, so it waits on the first;
while fetches keep finding messages, the next poll skips the wait (a ``PING`` round trip,
then the fetch), so a busy bulk lane is drained at full speed; an idle worker waits at most
``MULTI_QUEUE_WAIT_S`` before it looks at the other lists.

Registered by ``register()`` (called by ``worker.celery_ext.install``) as kombu's ``redis``
and ``rediss`` transports, so ``redis://`` and ``rediss://`` broker URLs keep their scheme for
Flower, ``celery inspect`` and the worker's banner. Written against kombu 5.7.0;
``worker.celery_ext.compat`` checks the kombu internals used here.
"""

from __future__ import annotations

import logging
import threading
import time
from queue import Empty
from typing import Any

import kombu.transport as kombu_transports
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual
from kombu.utils import encoding as kombu_encoding
from kombu.utils import json as kombu_json
from redis.exceptions import OutOfMemoryError

from worker.celery_ext.full_redis import FULL_WAIT_KEY, FullRedisChannelMixin, is_full
from worker.celery_ext.lua import load_script
from worker.redis_client import CELERY_REDIS_SCHEMES

__all__ = [
    "FETCH_SCRIPT",
    "MAX_FETCH",
    "TRANSPORT_PATH",
    "AtomicFetchChannel",
    "AtomicFetchQoS",
    "AtomicFetchTransport",
    "register",
]

log = logging.getLogger(__name__)

# kombu's internals are only partly typed; these are used as kombu itself uses them.
_RedisChannel: Any = kombu_redis.Channel
_RedisTransport: Any = kombu_redis.Transport
_RedisQoS: Any = kombu_redis.QoS
_VirtualQoS: Any = kombu_virtual.QoS
_bytes_to_str: Any = kombu_encoding.bytes_to_str
_loads: Any = kombu_json.loads

FETCH_SCRIPT = load_script("fetch.lua")

TRANSPORT_PATH = f"{__name__}:AtomicFetchTransport"

# At most this many messages per fetch, within the prefetch window: enough to cut the
# consumer's Redis round trips and event-loop turns per text by this factor, few enough that
# a worker does not go deaf to control messages while it hands them to the pool.
MAX_FETCH = 16

# An idle worker polling several lists blocks on the first only (BLMOVE takes one key): a
# message in another list is seen within this many seconds. Short, because every wait ends
# with a fetch of all lists; an idle worker pays two round trips per wait.
MULTI_QUEUE_WAIT_S = 0.1
# After a result found no room: the share of maxmemory below which texts are fetched again.
RESULTS_HEADROOM = 0.9


class AtomicFetchQoS(_RedisQoS):  # type: ignore[misc]
    """kombu's Redis QoS, minus a second unacked write, with acks written in batches.

    **Unacked copy.** The fetch script already wrote it atomically; kombu's ``append`` would
    write the same entry again, one more Redis round trip per text on the consumer's loop.

    **Acks.** Celery runs every ack on the consumer's event loop, and kombu sends each as its
    own ``MULTI ZREM HDEL EXEC`` round trip: the loop waits on Redis once per text. In an
    event loop (``AtomicFetchTransport.register_with_event_loop``) an ack frees its prefetch slot at
    once and joins a batch that the loop writes in one round trip at its next turn. Until
    then the message is still in ``unacked``: a worker killed in between gets it redelivered
    by the sweep (a duplicate, never a loss). Outside an event loop acks stay immediate.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_acks: list[str] = []
        self._pending_lock = threading.Lock()

    def append(self, message: Any, delivery_tag: str) -> None:
        """Adapted from kombu 5.7.0 kombu/transport/redis.py QoS.append."""
        if self.channel.take_recorded(delivery_tag):
            _VirtualQoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        """kombu's sweep, skipped while Redis is full: it could neither lock nor restore."""
        try:
            return super().restore_visible(*args, **kwargs)
        except OutOfMemoryError:
            log.warning("unacked texts not restored: Redis is full; the next sweep tries again")
            return None

    def ack(self, delivery_tag: str) -> None:
        """Adapted from kombu 5.7.0 kombu/transport/redis.py QoS.ack."""
        if not getattr(self.channel.connection, "acks_batched", False):
            self._write_acks([delivery_tag])
            _VirtualQoS.ack(self, delivery_tag)
            return
        with self._pending_lock:
            self._pending_acks.append(delivery_tag)
        _VirtualQoS.ack(self, delivery_tag)

    def flush_acks(self) -> None:
        """Write the acks waiting since the last flush, in one round trip."""
        if not self._pending_acks:
            return
        with self._pending_lock:
            tags, self._pending_acks = self._pending_acks, []
        self._write_acks(tags)

    def _write_acks(self, tags: list[str]) -> None:
        # Not in MULTI, which a full Redis refuses whole: acks are what frees it. The copy
        # goes first: an index entry without a copy is dropped by the sweep, while a copy
        # left without its index entry would never be found again.
        with self.channel.conn_or_acquire() as client, client.pipeline(False) as pipe:
            pipe.hdel(self.unacked_key, *tags).zrem(self.unacked_index_key, *tags).execute()


class AtomicFetchChannel(FullRedisChannelMixin, _RedisChannel):  # type: ignore[misc]
    """A Redis channel whose consumer fetch pops and records the unacked copy in one step.

    It also drops acks and rejects whose connection is gone, and reuses one synchronous
    client per connection pool.
    """

    _polled_keys: list[tuple[str, bool]]
    _cached_client: Any = None
    # Queues polled before any other, in this order (the ``queues_first`` transport option).
    queues_first: tuple[str, ...] = ()
    # Every n-th fetch puts the other queues first (0: never).
    others_first_every = 0
    from_transport_options = (
        *_RedisChannel.from_transport_options,
        "queues_first",
        "others_first_every",
    )
    _polls = 0
    # The last fetch found messages: the next poll fetches without blocking first.
    _hot = False
    # The command the current poll sent, whose reply _brpop_read parses.
    _poll_command = "BLMOVE"
    # Redis refuses BLMOVE for want of memory (until one succeeds); polls alternate between a
    # BRPOP wait that takes nothing and another BLMOVE.
    _redis_full = False
    _waiting_full = False
    # A text's result found no room: fetch nothing more until Redis has headroom
    # (RESULTS_HEADROOM), not merely until BLMOVE is allowed again (see note_results_full).
    _results_full = False

    QoS = AtomicFetchQoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Queues consumed without acks (such as control replies); kombu keeps no such list.
        self._no_ack_queues: set[str] = set()
        # Delivery tags whose unacked copy the fetch script wrote, until QoS.append sees them.
        self._recorded_tags: set[str] = set()
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    # After a Redis restart the worker reconnects on a new connection, while tasks that were
    # running finish and ack through the old channel, whose connection is gone. kombu then
    # needs that connection's parameters and raises AttributeError, which Celery calls
    # "Unrecoverable" and stops the worker. The messages are still in Redis's unacked hash:
    # the visibility-timeout sweep redelivers them (a duplicate, never a loss).

    def _connection_gone(self) -> bool:
        transport = self.connection
        return transport is None or getattr(transport, "client", None) is None

    def flush_acks(self) -> None:
        """Write this channel's batched acks, unless its connection is already gone."""
        if self._connection_gone():
            if self.qos._pending_acks:
                log.warning("%d acks dropped: their connection is gone; the sweep redelivers "
                            "those texts", len(self.qos._pending_acks))  # fmt: skip
            return
        self.qos.flush_acks()

    def close(self) -> None:
        if not self.closed and self._qos is not None:
            # Before kombu restores what is still unacked, so acked texts are not restored.
            try:
                self.flush_acks()
            except self.connection_errors:
                log.warning("acks not written before close: Redis is unreachable; the sweep "
                            "redelivers those texts")  # fmt: skip
        try:
            super().close()
        except AttributeError:
            if not self._connection_gone():
                raise
            log.warning("channel closed after its connection; unacked texts left to the sweep")

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        if self._connection_gone():
            log.warning("ack of %s dropped: its connection is gone; the sweep redelivers it",
                        delivery_tag)  # fmt: skip
            return
        super().basic_ack(delivery_tag, multiple=multiple)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._connection_gone():
            log.warning("reject of %s dropped: its connection is gone; the sweep redelivers it",
                        delivery_tag)  # fmt: skip
            return
        try:
            super().basic_reject(delivery_tag, requeue=requeue)
        except Exception as exc:
            # redis-py raises a refused MULTI as OutOfMemoryError, a ResponseError and not one
            # of kombu's connection errors: it escaped to Celery, which stopped the worker.
            if not is_full(exc):
                raise
            # Its prefetch slot is freed here; the message stays in unacked for the sweep.
            _VirtualQoS.ack(self.qos, delivery_tag)
            log.warning("reject of %s dropped: Redis is full; the sweep redelivers it once "
                        "Redis has room", delivery_tag)  # fmt: skip

    def _atomic(self) -> bool:
        # A key prefix rewrites key names in ways the script would have to repeat; without
        # ack emulation there is no unacked copy to write. Both keep kombu's own fetch.
        return bool(self.ack_emulation) and not self.global_keyprefix

    def _fetch(self, keys: list[tuple[str, bool]]) -> tuple[str, list[bytes]] | None:
        """Pop up to ``MAX_FETCH`` raw messages of the first non-empty ``(key, acked)`` list.

        Writes their unacked copies when ``acked``; never more than the prefetch window allows.
        """
        room = self.qos.can_consume_max_estimate()
        limit = MAX_FETCH if room is None else max(1, min(room, MAX_FETCH))
        with self.conn_or_acquire() as client:
            found = client.eval(
                FETCH_SCRIPT,
                len(keys) + 2,
                *(key for key, _ in keys),
                self.unacked_key,
                self.unacked_index_key,
                repr(time.time()),
                str(limit),
                *("1" if acked else "0" for _, acked in keys),
            )
        if not found:
            return None
        key, *pairs = found
        messages = []
        for item, tag in zip(pairs[::2], pairs[1::2], strict=True):
            if tag:
                self._recorded_tags.add(_bytes_to_str(tag))
            messages.append(item)
        return _bytes_to_str(key), messages

    def take_recorded(self, delivery_tag: str) -> bool:
        """True once for a tag whose unacked copy the fetch script already wrote."""
        try:
            self._recorded_tags.remove(delivery_tag)
        except KeyError:
            return False
        return True

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Adapted from kombu 5.7.0 kombu/transport/redis.py Channel._brpop_start."""
        if not self._atomic():
            super()._brpop_start(timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._ordered(self._queue_cycle.consume(len(self.active_queues)))
        if not queues:
            return
        # The wait is always on the first queue; the fetch order gives the others a turn.
        self._polls += 1
        fetch_order = queues
        if self.others_first_every and self._polls % self.others_first_every == 0:
            fetch_order = [q for q in queues if q not in self.queues_first] + [
                q for q in queues if q in self.queues_first
            ]
        self._polled_keys = [
            (self._q_for_pri(queue, pri), queue not in self._no_ack_queues)
            for pri in self.priority_steps
            for queue in fetch_order
        ]
        first = self._q_for_pri(queues[0], self.priority_steps[0])
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        if self._redis_full and not self._waiting_full:
            # Waits brpop_timeout and takes nothing; then BLMOVE is tried again.
            self._waiting_full = True
            self._poll_command = "BRPOP"
            self.client.connection.send_command("BRPOP", FULL_WAIT_KEY, timeout or 1)
            return
        self._waiting_full = False
        if self._hot:
            # Messages were there a moment ago: answer at once, then fetch from every list.
            self._poll_command = "PING"
            self.client.connection.send_command("PING")
            return
        if len(self._polled_keys) > 1:
            timeout = min(timeout or MULTI_QUEUE_WAIT_S, MULTI_QUEUE_WAIT_S)
        # Blocks until the list has an element, and leaves it there.
        self._poll_command = "BLMOVE"
        self.client.connection.send_command("BLMOVE", first, first, "RIGHT", "RIGHT", timeout or 0)

    def note_results_full(self) -> None:
        """A text's result found no room in Redis: take no new texts until it has headroom.

        Acks free a little memory, enough for Redis to allow the fetch again, but not for the
        results of the texts then fetched: each would be embedded, refused, and paid for
        again when it is redelivered (the chaos run: about 300 of 9,000 texts). So the
        fetch waits until ``INFO memory`` shows ``used_memory`` below ``RESULTS_HEADROOM``
        of ``maxmemory``.
        """
        self._results_full = True
        self._note_full()

    def _has_headroom(self) -> bool:
        memory = self.client.info("memory")
        limit = int(memory.get("maxmemory", 0))
        return limit == 0 or int(memory.get("used_memory", 0)) < RESULTS_HEADROOM * limit

    def _note_full(self) -> None:
        if not self._redis_full:
            log.warning("Redis is full (maxmemory): taking no new texts until it has "
                        "room; acks still free it")  # fmt: skip
        self._redis_full = True
        self._hot = False

    def _ordered(self, queues: list[str]) -> list[str]:
        """``queues`` with those of ``queues_first`` ahead, in that order; the rest as given."""
        if not self.queues_first:
            return list(queues)
        first = [q for q in self.queues_first if q in queues]
        return first + [q for q in queues if q not in first]

    def _brpop_read(self, **options: Any) -> bool:
        """Adapted from kombu 5.7.0 kombu/transport/redis.py Channel._brpop_read."""
        if not self._atomic():
            return bool(super()._brpop_read(**options))
        try:
            if self._waiting_full:
                self.client.parse_response(self.client.connection, "BRPOP", **options)
                raise Empty()  # the next poll tries BLMOVE again
            try:
                self.client.parse_response(self.client.connection, self._poll_command, **options)
            except OutOfMemoryError:
                # The connection is fine, and Redis answers; it has no room.
                self._note_full()
                raise Empty() from None
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if self._results_full:
                if not self._has_headroom():
                    self._note_full()
                    raise Empty()
                self._results_full = False
            if self._redis_full:
                log.warning("Redis has room again: taking texts")
                self._redis_full = False
            # Even after a timeout: another priority or queue may hold a message.
            try:
                fetched = self._fetch(self._polled_keys)
            except OutOfMemoryError:
                # After a PING (no wait), the fetch is the first command a full Redis refuses.
                self._note_full()
                raise Empty() from None
            self._hot = fetched is not None
            if fetched is None:
                raise Empty()
            key, items = fetched
            dest = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self._deliver_all(items, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _deliver_all(self, items: list[Any], dest: str) -> None:
        # Every popped message is delivered even if one of them fails (an undecodable body, a
        # consumer error): the others would otherwise wait in unacked for the sweep. The
        # first failure is raised afterwards, as the one-message fetch would have raised it.
        failure: Exception | None = None
        for item in items:
            try:
                self.connection._deliver(_loads(_bytes_to_str(item)), dest)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _create_client(self, asynchronous: bool = False) -> Any:
        """Adapted from kombu 5.7.0 kombu/transport/redis.py Channel._create_client.

        The synchronous client is built once per connection pool. It holds no connection of
        its own (it borrows from the pool), and a ``redis.Redis`` is thread-safe.
        """
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self._cached_client
        # A channel drops its pools on disconnect; a client of a dropped pool is not reused.
        # No lock: two threads racing here each build a valid client, and the last one stays.
        if client is None or client.connection_pool is not pool:
            client = super()._create_client(asynchronous=False)
            self._cached_client = client
        return client


class AtomicFetchTransport(_RedisTransport):  # type: ignore[misc]
    """``kombu.transport.redis.Transport`` with ``AtomicFetchChannel`` and batched acks."""

    Channel = AtomicFetchChannel

    # Set once the transport runs in an event loop that flushes acks on every turn.
    acks_batched = False

    # kombu's key formats, for readers outside the layer (worker.observability's queue gauges):
    # they ask the app's transport instead of spelling kombu's keys themselves.
    def queue_keys(self, queue: str) -> list[str]:
        """The Redis lists holding ``queue``'s messages, one per priority step (kombu's names)."""
        channel = self.Channel
        return [
            queue if step == 0 else f"{queue}{channel.sep}{step}" for step in channel.priority_steps
        ]

    def unacked_key(self) -> str:
        """The Redis hash holding messages delivered to a worker and not yet acknowledged."""
        return str(self.Channel.unacked_key)

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Also flush every channel's batched acks on each turn of the loop."""
        super().register_with_event_loop(connection, loop)

        def flush_acks() -> None:
            # A connection error here reaches Celery like a failed fetch: it reconnects.
            for channel in list(self.channels):
                if isinstance(channel, AtomicFetchChannel):
                    channel.flush_acks()

        loop.on_tick.add(flush_acks)
        self.acks_batched = True


def register() -> None:
    """Make ``AtomicFetchTransport`` kombu's ``redis`` and ``rediss`` transport (idempotent).

    Selecting it by ``broker_transport`` instead would put the class path in the broker URL
    (``worker.celery_ext.transport:AtomicFetchTransport://…``), which Flower cannot read (its
    Broker tab and ``/api/queues/length`` answer 404) and the worker's banner prints as
    ``Transport://``. kombu caches resolved transport classes, so a name resolved before this
    call is dropped from the cache. Process-wide, like kombu's table itself.
    """
    for scheme in CELERY_REDIS_SCHEMES:
        kombu_transports.TRANSPORT_ALIASES[scheme] = TRANSPORT_PATH
        kombu_transports._transport_cache.pop(scheme, None)
