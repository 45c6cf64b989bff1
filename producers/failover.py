"""Behind Redis Sentinel: which publish errors mean a failover, and how long to wait one out.

A master that died or was demoted refuses a publish for the few seconds the Sentinels take
to promote a replica. The producers (``producers.client``, ``producers.aio``) send such a
publish again, with the same task ids, after each of ``failover_waits``; any other error,
and a plain Redis that does not answer, fail at once.
"""

from __future__ import annotations

from collections.abc import Iterator

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["failover_waits", "is_failover_error"]


def failover_waits(failover_timeout_s: float) -> list[float]:
    """Seconds to wait before each new attempt at a publish behind Sentinel.

    A master that does not answer may be being replaced: attempts go on, 0.2 s apart and
    doubling to at most 1 s, until the waits add up to ``failover_timeout_s`` seconds
    (``EMBEDDINGS_REDIS_FAILOVER_TIMEOUT_S``); then the publish fails.
    """
    waits: list[float] = []
    wait = 0.2
    while sum(waits) < failover_timeout_s:
        waits.append(wait)
        wait = min(1.0, wait * 2)
    return waits


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # a chain can loop back on itself
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


# What a master that died or was demoted answers: no connection, no reply in time, READONLY
# (redis-py's Sentinel connections turn that into a ConnectionError), or kombu's wrapping.
_FAILOVER_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OperationalError,
    OSError,
)


def is_failover_error(exc: BaseException) -> bool:
    """Whether ``exc``, or an error behind it, says the master is gone, unreachable or demoted.

    Such a publish is worth another attempt behind Sentinel. A full master
    (``OutOfMemoryError``, however wrapped) is not: it stays full through a retry.
    """
    causes = list(_causes(exc))
    if any(isinstance(cause, OutOfMemoryError) for cause in causes):
        return False
    return any(isinstance(cause, _FAILOVER_ERRORS) for cause in causes)
