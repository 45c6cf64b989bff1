"""The same adaptations over Redis Sentinel: kombu's and Celery's Sentinel classes, subclassed.

A ``sentinel://h1:26379;sentinel://h2:26379`` URL (``REDIS_URL``, ``EMBEDDINGS_BROKER_URL`` or
``EMBEDDINGS_RESULT_BACKEND_URL``) selects these instead of the plain Redis ones
(``worker.celery_ext.config``). Each is the project's Redis class placed before kombu's or
Celery's Sentinel class, so the fetch that cannot lose a message, the batched and
full-Redis-proof acks, the one-step result writes, the revoke list and the outage handling
are the same, on a connection pool that asks the Sentinels for the current master and, after
a failover, reconnects to the new one. Written against kombu 5.7.0 and celery 5.7.0;
``worker.celery_ext.compat`` checks the names used here.
"""

from __future__ import annotations

from typing import Any

import kombu.transport
from celery.backends import redis as celery_redis
from kombu.transport import redis as kombu_redis

from worker.celery_ext.result_backend import ResultBackend
from worker.celery_ext.transport import AtomicFetchChannel, AtomicFetchTransport

__all__ = [
    "SENTINEL_TRANSPORT_PATH",
    "SentinelAtomicFetchChannel",
    "SentinelAtomicFetchTransport",
    "SentinelResultBackend",
    "register_transport_alias",
]

SENTINEL_TRANSPORT_PATH = "worker.celery_ext.sentinel:SentinelAtomicFetchTransport"

_SentinelChannel: Any = kombu_redis.SentinelChannel
_SentinelTransport: Any = kombu_redis.SentinelTransport
_SentinelBackend: Any = celery_redis.SentinelBackend


class SentinelAtomicFetchChannel(AtomicFetchChannel, _SentinelChannel):  # type: ignore[misc]
    """``AtomicFetchChannel`` on kombu's ``SentinelChannel`` (master found by the Sentinels)."""

    # Both bases extend kombu's option names; the first base alone would drop the Sentinel's.
    from_transport_options = (*_SentinelChannel.from_transport_options, "queues_first")


class SentinelAtomicFetchTransport(AtomicFetchTransport, _SentinelTransport):  # type: ignore[misc]
    """``AtomicFetchTransport`` on kombu's ``SentinelTransport``."""

    Channel = SentinelAtomicFetchChannel


class SentinelResultBackend(ResultBackend, _SentinelBackend):  # type: ignore[misc]
    """``ResultBackend`` on Celery's ``SentinelBackend``."""


def register_transport_alias() -> None:
    """Make kombu's ``sentinel`` transport name load ``SentinelAtomicFetchTransport`` (idempotent).

    A ``sentinel://a;sentinel://b`` URL is a failover list to kombu: when a connection is
    lost, kombu switches to the next URL and takes the transport from its scheme, dropping
    the one configured (``broker_transport``). Without this, a worker ran kombu's stock
    Sentinel channel from its first reconnection on, and stopped ("Unrecoverable error")
    at its second failover. Process-wide; called by ``install`` and ``apply_config``.
    """
    kombu.transport.TRANSPORT_ALIASES["sentinel"] = SENTINEL_TRANSPORT_PATH
