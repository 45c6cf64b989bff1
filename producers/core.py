"""What the sync and asyncio producers decide alike, with no I/O: the producers' core.

Chunking, fresh task ids, the Sentinel failover schedule (:class:`Failover`) and the error
of a list whose enqueue stopped midway. Nothing here sends, sleeps or reads a clock:
``producers.client`` drives a :class:`Failover` with ``time.sleep`` and ``producers.aio``
with ``asyncio.sleep``, so both retry, resume and give up the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.errors import (
    EmbeddingPartialEnqueueError,
    EmbeddingPartialQueueFullError,
    EmbeddingQueueFullError,
    EmbeddingQueueUnavailableError,
    causes,
)

__all__ = [
    "Call",
    "Failover",
    "Resend",
    "as_str",
    "broker_failure",
    "calls",
    "chunked",
    "enqueue_failure",
    "failover_waits",
    "fresh_ids",
    "is_failover_error",
    "is_unreachable",
    "partial_enqueue_error",
    "publish_waits",
    "queue_error",
]

T = TypeVar("T")
Call = tuple[tuple[Any, ...], dict[str, Any]]
"""One task's ``(args, kwargs)``."""


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``, in order."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fresh_ids(count: int) -> list[str]:
    """``count`` new task ids, chosen before the first attempt: a resent text is the same task."""
    return [str(uuid.uuid4()) for _ in range(count)]


def calls(texts: Sequence[str], model: str | None) -> list[Call]:
    """The ``embeddings.embed_text`` call of each text: ``(text,)``, and ``model`` if one."""
    kwargs: dict[str, Any] = {"model": model} if model else {}
    return [((text,), kwargs) for text in texts]


def as_str(value: bytes | str) -> str:
    """A Redis key or channel name as ``str``."""
    return value.decode() if isinstance(value, bytes) else value


# -- the failover schedule ----------------------------------------------------------------


def publish_waits(broker_url: str, failover_timeout_s: float) -> list[float]:
    """Seconds to wait before each new attempt at a publish to ``broker_url``.

    Behind Sentinel, ``failover_waits(failover_timeout_s)``: a master that does not answer
    may be being replaced. For a plain Redis none: one that does not answer is down, and
    the publish fails at once.
    """
    return failover_waits(failover_timeout_s) if broker_url.startswith("sentinel://") else []


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
    chain = list(causes(exc))
    if any(isinstance(cause, OutOfMemoryError) for cause in chain):
        return False
    return any(isinstance(cause, _FAILOVER_ERRORS) for cause in chain)


def is_unreachable(exc: BaseException) -> bool:
    """Whether a single text's typed publish error is worth another attempt: not a full Redis."""
    return isinstance(exc, EmbeddingQueueUnavailableError) and not isinstance(
        exc, EmbeddingQueueFullError
    )


@dataclass(frozen=True)
class Resend:
    """Wait ``wait_s`` seconds, then send the items again from index ``start`` on."""

    wait_s: float
    start: int


class Failover:
    """Where a publish of many items stands, and what to do after an attempt that failed.

    ``waits`` are the pauses before each new attempt (``failover_waits`` behind Sentinel,
    none on a plain Redis); ``retry_if`` says which errors are worth one. The shell sends
    the items from ``done`` on and reports: :meth:`committed` for a chunk that went
    through, which gives the next failure the whole schedule again (as each text sent
    singly has it), and :meth:`failed` for an attempt that did not, which answers a
    :class:`Resend` or None (give up: raise).
    """

    def __init__(
        self,
        waits: Sequence[float],
        retry_if: Callable[[BaseException], bool] = is_failover_error,
    ) -> None:
        self._waits = tuple(waits)
        self._left = self._waits
        self._retry_if = retry_if
        self.done = 0
        """Items enqueued so far, from the first: the next attempt starts here."""

    def committed(self, count: int) -> None:
        """``count`` more items went through, as a whole chunk."""
        self.done += count
        self._left = self._waits

    def failed(self, exc: BaseException, sent: int = 0) -> Resend | None:
        """The attempt failed with ``exc`` after its first ``sent`` items went through.

        Those count as done but leave the schedule where it was. Returns what to do next,
        or None once the waits are spent or ``exc`` is not worth another attempt.
        """
        self.done += sent
        if not self._left or not self._retry_if(exc):
            return None
        wait_s, self._left = self._left[0], self._left[1:]
        return Resend(wait_s, self.done)


# -- the errors of an enqueue ---------------------------------------------------------------


def queue_error(exc: BaseException, doing: str) -> EmbeddingQueueUnavailableError:
    """The typed error for ``exc``, raised while ``doing`` (e.g. "enqueue the text").

    ``EmbeddingQueueFullError`` when Redis refused a write at its ``maxmemory`` (kombu wraps
    that answer as a connection error), else ``EmbeddingQueueUnavailableError``.
    """
    if any(isinstance(cause, OutOfMemoryError) for cause in causes(exc)):
        return EmbeddingQueueFullError(
            f"could not {doing}: Redis is full (maxmemory reached, noeviction); it takes "
            "texts again once workers drain the queue or Redis gets more memory"
        )
    return EmbeddingQueueUnavailableError(f"could not {doing}: the broker is unreachable ({exc})")


def broker_failure(exc: BaseException) -> BaseException | None:
    """The broker failure behind ``exc``, or None when ``exc`` is something else."""
    if isinstance(exc, (OperationalError, RedisError)):
        return exc
    # Celery's Redis result consumer gives up on an unreachable Redis this way.
    if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, RedisError):
        return exc.__cause__
    return None


def partial_enqueue_error(
    cause: BaseException, enqueued: Sequence[Any], total: int
) -> EmbeddingPartialEnqueueError:
    """The error of a list of ``total`` texts whose enqueue stopped after ``enqueued``.

    ``EmbeddingPartialQueueFullError`` (an ``EmbeddingQueueFullError`` too) when ``cause``
    is Redis refusing a write at its ``maxmemory``, else ``EmbeddingPartialEnqueueError``;
    the message says which (``queue_error``) and where the list stopped.
    """
    error = queue_error(cause, "enqueue the text")
    full = isinstance(error, EmbeddingQueueFullError) or isinstance(cause, EmbeddingQueueFullError)
    kind = EmbeddingPartialQueueFullError if full else EmbeddingPartialEnqueueError
    if isinstance(cause, EmbeddingQueueFullError):
        error = cause
    done = len(enqueued)
    return kind(
        f"{error}; the first {done} of {total} texts were enqueued, none from index {done} on",
        enqueued=enqueued,
        not_enqueued_from=done,
    )


def enqueue_failure(exc: Exception, enqueued: Sequence[Any], total: int) -> Exception:
    """What a list's enqueue that stopped with ``exc`` after ``enqueued`` raises.

    ``partial_enqueue_error`` when the broker failed (a raw broker error, or a shell's
    typed ``EmbeddingQueueUnavailableError`` and what it was raised from); any other
    ``exc`` (a bug, a bad route) is raised as it is.
    """
    if isinstance(exc, EmbeddingQueueUnavailableError):
        cause: BaseException | None = exc.__cause__ or exc
    else:
        cause = broker_failure(exc)
    if cause is None:
        return exc
    return partial_enqueue_error(cause, enqueued, total)
