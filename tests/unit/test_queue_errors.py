"""A producer tells a full Redis from an unreachable one."""

from __future__ import annotations

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from producers.client import queue_error
from worker.errors import EmbeddingQueueFullError, EmbeddingQueueUnavailableError


def _wrapped(cause: BaseException) -> OperationalError:
    # What kombu raises: its own error, raised from redis-py's.
    try:
        try:
            raise cause
        except Exception as exc:
            raise OperationalError(str(exc)) from exc
    except OperationalError as wrapped:
        return wrapped


def test_a_refused_write_at_maxmemory_is_a_full_queue() -> None:
    error = queue_error(_wrapped(OutOfMemoryError("command not allowed")), "enqueue the text")
    assert type(error) is EmbeddingQueueFullError
    assert "Redis is full" in str(error)


def test_a_lost_connection_is_an_unreachable_queue() -> None:
    error = queue_error(_wrapped(RedisConnectionError("refused")), "enqueue the text")
    assert type(error) is EmbeddingQueueUnavailableError
    assert "unreachable" in str(error)
