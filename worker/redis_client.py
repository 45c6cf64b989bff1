"""A synchronous Redis client for any URL the project accepts, Sentinel included.

``redis://``, ``rediss://`` and ``unix://`` go to ``redis.Redis.from_url``. A
``sentinel://h1:26379;sentinel://h2:26379/0`` URL (Celery's and kombu's form) gives a client
of the master the Sentinels name ``REDIS_SENTINEL_MASTER``: after a failover its connections
reconnect to the new master. The first URL carries the master's database and password;
``REDIS_SENTINEL_PASSWORD`` is the Sentinels' own. Used by the shared rate-limit budget and
the queue-depth gauge, which talk to the broker's Redis directly.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis import sentinel as redis_sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.settings import Settings

__all__ = ["REDIS_SCHEMES", "SENTINEL_DEFAULT_PORT", "bounded_client", "redis_from_url"]

REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")

# redis-py's Sentinel module is untyped.
_Sentinel: Any = redis_sentinel.Sentinel
SENTINEL_DEFAULT_PORT = 26379


def redis_from_url(url: str, settings: Settings, **options: Any) -> redis.Redis:
    """A client for ``url``; ``options`` (timeouts, retries) apply to the Redis connections."""
    if urlsplit(url).scheme != "sentinel":
        client: redis.Redis = redis.Redis.from_url(url, **options)
        return client
    chunks = [urlsplit(chunk) for chunk in url.split(";") if chunk.strip()]
    hosts = [(part.hostname or "localhost", part.port or SENTINEL_DEFAULT_PORT) for part in chunks]
    first = chunks[0]
    db = int(first.path.strip("/") or 0)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": options.get("socket_timeout", settings.redis_socket_timeout_s),
        "socket_connect_timeout": options.get("socket_connect_timeout", 2),
    }
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    credentials = {"password": unquote(first.password)} if first.password else {}
    master: redis.Redis = _Sentinel(hosts, sentinel_kwargs=sentinel_kwargs).master_for(
        settings.redis_sentinel_master, db=db, **credentials, **options
    )
    return master


def bounded_client(url: str, settings: Settings) -> redis.Redis:
    """A client for the worker's side stores (the shared budget, the vector cache).

    Bounded timeouts and one quick retry for a stale connection; callers ride out longer
    outages themselves, so a dead Redis costs seconds, not minutes.
    """
    return redis_from_url(
        url,
        settings,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1),
    )
