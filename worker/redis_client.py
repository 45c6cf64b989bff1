"""Redis clients for any URL the project accepts, Sentinel included, sync and asyncio.

``redis://``, ``rediss://`` and ``unix://`` go to ``from_url``. A
``sentinel://h1:26379;sentinel://h2:26379/0`` URL (Celery's and kombu's form) gives a client
of the master the Sentinels name ``REDIS_SENTINEL_MASTER``: after a failover its connections
reconnect to the new master. The first URL carries the master's database and password;
``REDIS_SENTINEL_PASSWORD`` is the Sentinels' own. :func:`redis_from_url` serves the shared
rate-limit budget, the vector cache and the queue-depth gauge; :func:`async_redis_from_url`
the asyncio producers and the gateway. Both read the URL with :func:`sentinel_target`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
from redis import sentinel as redis_sentinel
from redis.asyncio import sentinel as async_sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.errors import EmbeddingConfigError
from worker.settings import Settings

__all__ = [
    "CELERY_REDIS_SCHEMES",
    "REDIS_SCHEMES",
    "SENTINEL_DEFAULT_PORT",
    "SENTINEL_SCHEME",
    "SentinelRedis",
    "SentinelTarget",
    "async_redis_from_url",
    "bounded_client",
    "redis_from_url",
    "sentinel_target",
    "without_backend_class",
]

# The one table of Redis URL schemes: every one the project reads, and whether kombu's Redis
# transport and Celery's Redis backend take it under that name. sentinel:// reaches them
# through their Sentinel classes instead; unix:// only redis-py's clients open.
REDIS_SCHEMES: Mapping[str, bool] = {
    "redis": True,
    "rediss": True,
    "unix": False,
    "sentinel": False,
}
CELERY_REDIS_SCHEMES = tuple(scheme for scheme, celery_name in REDIS_SCHEMES.items() if celery_name)
SENTINEL_SCHEME = "sentinel"

# redis-py's Sentinel modules are untyped.
_Sentinel: Any = redis_sentinel.Sentinel
_AsyncSentinel: Any = async_sentinel.Sentinel
SENTINEL_DEFAULT_PORT = 26379
# How long a Sentinel may take to accept a connection, unless the caller bounds Redis's.
_SENTINEL_CONNECT_TIMEOUT_S = 2


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``sentinel://`` URL says: the Sentinels, and the master's database and password."""

    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    password: str | None = field(default=None, repr=False)


def without_backend_class(url: str) -> str:
    """``url`` without a leading ``module:Class+`` (the backend class Celery's
    ``by_url`` reads before a result backend URL). Only a ``+`` before the ``://`` counts:
    a password may hold one too."""
    scheme, _, _ = url.partition("://")
    return url.split("+", 1)[1] if "+" in scheme else url


def sentinel_target(url: str) -> SentinelTarget:
    """Read a ``sentinel://h1:26379/0;sentinel://h2:26379`` URL.

    Raises :class:`EmbeddingConfigError` naming the faulty part by position, never quoting
    the URL: its first part may carry the master's password.
    """
    chunks = [chunk.strip() for chunk in url.split(";") if chunk.strip()]
    if not chunks:
        raise EmbeddingConfigError("a sentinel:// URL must name at least one Sentinel")
    hosts = [_sentinel_address(chunk, i + 1, len(chunks)) for i, chunk in enumerate(chunks)]
    first = urlsplit(chunks[0])
    path = first.path.strip("/")
    if path and not path.isdigit():
        raise EmbeddingConfigError(
            "the first part of a sentinel:// URL must end in a database number (/0), or nothing"
        )
    return SentinelTarget(
        hosts=tuple(hosts),
        db=int(path or 0),
        password=unquote(first.password) if first.password else None,
    )


def _sentinel_address(chunk: str, position: int, count: int) -> tuple[str, int]:
    where = f"part {position} of {count} of the sentinel:// URL"
    part = urlsplit(chunk)
    if part.scheme != "sentinel":
        raise EmbeddingConfigError(f"{where} must start with sentinel://, not {part.scheme}://")
    try:
        port = part.port  # urlsplit checks the number and its range only when asked
    except ValueError:
        raise EmbeddingConfigError(f"{where} has no valid port (a number up to 65535)") from None
    return part.hostname or "localhost", port or SENTINEL_DEFAULT_PORT


def _sentinel_kwargs(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    # Questions to a Sentinel are bounded like those to Redis, so a dead one is skipped.
    kwargs: dict[str, Any] = {
        "socket_timeout": options.get("socket_timeout") or settings.redis_socket_timeout_s,
        "socket_connect_timeout": options.get("socket_connect_timeout")
        or _SENTINEL_CONNECT_TIMEOUT_S,
    }
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password
    return kwargs


def _credentials(target: SentinelTarget) -> dict[str, Any]:
    return {"password": target.password} if target.password else {}


def redis_from_url(url: str, settings: Settings, **options: Any) -> redis.Redis:
    """A client for ``url``; ``options`` (timeouts, retries) apply to the Redis connections."""
    if urlsplit(url).scheme != "sentinel":
        client: redis.Redis = redis.Redis.from_url(url, **options)
        return client
    target = sentinel_target(url)
    sentinels = _Sentinel(list(target.hosts), sentinel_kwargs=_sentinel_kwargs(settings, options))
    master: redis.Redis = sentinels.master_for(
        settings.redis_sentinel_master, db=target.db, **_credentials(target), **options
    )
    return master


class SentinelRedis(redis.asyncio.Redis):
    """An asyncio client of a Sentinel-managed master that also closes its Sentinel clients.

    redis-py's ``master_for`` client closes only the master's connections; the ones it
    opened to ask the Sentinels would be left for the garbage collector, which warns.
    """

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


def async_redis_from_url(url: str, settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """:func:`redis_from_url` for asyncio: a ``redis.asyncio.Redis`` for ``url``.

    Behind Sentinel, a :class:`SentinelRedis` whose connections, pub/sub ones included,
    ask the Sentinels for the master each time they connect.
    """
    if urlsplit(url).scheme != "sentinel":
        client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url, **options)
        return client
    target = sentinel_target(url)
    sentinels = _AsyncSentinel(
        list(target.hosts), sentinel_kwargs=_sentinel_kwargs(settings, options)
    )
    master: redis.asyncio.Redis = sentinels.master_for(
        settings.redis_sentinel_master,
        redis_class=SentinelRedis,
        db=target.db,
        **_credentials(target),
        **options,
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
