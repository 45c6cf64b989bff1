"""``worker.transport`` (atomic fetch), reusing one client object per channel, not one per command.

kombu builds a new ``redis.Redis`` for every publish, event, QoS append, ack and fetch
(``Channel.conn_or_acquire``). The client holds no connection of its own (it borrows from
the channel's pool), but redis-py 8 spends ~100 µs building its callback tables each time:
about 14% of a busy worker's GIL time under py-spy, on the consumer's main loop that already
limits intake. A ``redis.Redis`` is thread-safe, so one per channel and pool does. Selected
in ``celeryconfig`` for ``redis://`` and ``rediss://`` brokers.
"""

from __future__ import annotations

from typing import Any

from worker.transport import AtomicFetchChannel
from worker.transport import Transport as AtomicFetchTransport

__all__ = ["Channel", "Transport"]


class Channel(AtomicFetchChannel):
    """An atomic-fetch channel whose synchronous client is built once per connection pool."""

    _cached_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
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


class Transport(AtomicFetchTransport):
    """``worker.transport.Transport`` with ``Channel`` above."""

    Channel = Channel
