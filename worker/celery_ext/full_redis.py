"""kombu Redis channel methods that a full Redis (``maxmemory``, ``noeviction``) would refuse.

A full Redis refuses every ``MULTI`` block whole, whatever it holds, and every command that
may grow memory (``SADD``, ``LPUSH``, a script's first such write). kombu sends queue sizes,
checks and deletes in ``MULTI``, and binds queues with ``SADD``: a worker starting while
Redis is full stopped ("Unrecoverable error: OutOfMemoryError"). ``FullRedisChannelMixin``
sends the same commands without ``MULTI`` (none of them needs atomicity: each answers or
removes on its own) and leaves a refused binding unrecorded. Mixed into every channel of
``worker.celery_ext.transport``. Written against kombu 5.7.0; ``worker.celery_ext.compat``
checks the kombu internals used here.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

from redis.exceptions import OutOfMemoryError

from worker.errors import causes

__all__ = ["FULL_WAIT_KEY", "FullRedisChannelMixin", "is_full"]

log = logging.getLogger(__name__)

# A key nothing writes: a full Redis refuses BLMOVE but not a BRPOP, which paces the
# channel's retries without taking anything.
FULL_WAIT_KEY = "embeddings-redis-full-wait"


def is_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it was raised from) is Redis refusing a write at maxmemory."""
    return any(isinstance(cause, OutOfMemoryError) for cause in causes(exc))


class FullRedisChannelMixin:
    """kombu's queue bookkeeping without ``MULTI``, and a refused binding left unrecorded."""

    # Provided by kombu's Redis Channel.
    auto_delete_queues: set[str]
    keyprefix_queue: str
    keyprefix_binding_permanent: str
    priority_steps: list[int]
    sep: str
    conn_or_acquire: Any
    _q_for_pri: Any

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """kombu's bind, which a full Redis refuses, left unrecorded then instead of fatal.

        A worker binds its queues at start-up, and Celery's mingle a reply queue: a worker
        starting while Redis is full would stop. Task and broadcast queues work unrecorded
        (kombu routes to the queue named by the routing key, broadcasts are PUBLISHed); a
        reply queue then gets no replies, and mingle goes on without them.
        """
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)  # type: ignore[misc]
        except OutOfMemoryError:
            log.warning("binding of %s to %s not recorded: Redis is full", queue, exchange)

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any
    ) -> None:
        """Adapted from kombu 5.7.0 kombu/transport/redis.py Channel._delete, without MULTI."""
        self.auto_delete_queues.discard(queue)
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        with self.conn_or_acquire(client=kwargs.get("client")) as client:
            client.srem(self.keyprefix_queue % (exchange,), member)
            client.srem(self.keyprefix_binding_permanent % (exchange,), member)
            with client.pipeline(transaction=False) as pipe:
                for pri in self.priority_steps:
                    pipe = pipe.delete(self._q_for_pri(queue, pri))
                pipe.execute()

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        """Adapted from kombu 5.7.0 kombu/transport/redis.py Channel._has_queue, without MULTI."""
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for pri in self.priority_steps:
                pipe = pipe.exists(self._q_for_pri(queue, pri))
            return any(pipe.execute())

    def _size(self, queue: str) -> int:
        """Adapted from kombu 5.7.0 kombu/transport/redis.py Channel._size, without MULTI."""
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for pri in self.priority_steps:
                pipe = pipe.llen(self._q_for_pri(queue, pri))
            sizes = pipe.execute()
        return sum(int(size) for size in sizes if isinstance(size, numbers.Integral))
