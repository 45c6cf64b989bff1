"""A Redis client for the worker's own side stores (the shared budget, the vector cache).

Bounded timeouts and one quick retry for a stale connection; callers ride out longer
outages themselves, so a dead Redis costs seconds, not minutes.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.settings import Settings

__all__ = ["bounded_client"]


def bounded_client(url: str, settings: Settings) -> redis.Redis:
    """A client for ``url`` that gives up after ``settings.redis_socket_timeout_s``."""
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1),
    )
