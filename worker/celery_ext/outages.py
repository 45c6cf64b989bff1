"""What a worker does when Redis fails under a running text: the text goes back to the queue.

Celery's tracer turns any error from the result write into the task's failure: with Redis
unreachable for a moment, a text whose vector was computed would end FAILURE with a
``redis.exceptions.ConnectionError`` (written once Redis answered again) and be acked. An
outage of our own storage is not the text's failure. So:

- ``worker.celery_ext.result_backend.ResultBackend`` (Celery's Redis backend) reports a
  write that failed through its retries as :class:`EmbeddingResultStoreUnavailableError`,
  and never stores an outage as a failure;
- ``RequeueOnOutageRequest`` (the embedding task's request class, selected by a task
  annotation in ``worker.celery_ext.config``) rejects such a text's message with requeue
  instead of acking it. When the broker connection is gone too, the reject is dropped
  (``worker.celery_ext.transport``) and the unacked-restore sweep brings the text back.

Either way the text runs again: at least once, never an infrastructure FAILURE. Before that,
``result_backend_always_retry`` (``worker.celery_ext.config``) retries the write, so a short
blip costs nothing. The error crosses from the pool to the request by type, which survives
the prefork pool's pickling (an exception's ``__cause__`` does not). Written against celery
5.7.0; ``worker.celery_ext.compat`` checks the Celery internals used here.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery.exceptions import Retry
from celery.worker.state import task_ready
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.celery_ext.full_redis import is_full
from worker.celery_ext.privacy import RedactedInfoRequest
from worker.errors import EmbeddingResultStoreUnavailableError, causes

__all__ = ["RequeueOnOutageRequest", "is_redis_outage"]

log = logging.getLogger(__name__)

# Redis unreachable, as redis-py (result store), kombu (broker: publishing a Celery retry)
# and this module report it; or full (maxmemory, noeviction), refusing the write: the
# text's outcome is just as unwritable, and it runs again once Redis has room.
_OUTAGE_ERRORS = (
    RedisConnectionError,
    OutOfMemoryError,
    RedisTimeoutError,
    OperationalError,
    EmbeddingResultStoreUnavailableError,
)


def is_redis_outage(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from, says Redis could not be reached (or
    was full)."""
    return any(isinstance(cause, _OUTAGE_ERRORS) for cause in causes(exc))


class RequeueOnOutageRequest(RedactedInfoRequest):
    """A request that returns its message to the queue when Redis failed under it.

    It also answers ``celery inspect`` with the text's length and hash, not the text
    (``worker.celery_ext.privacy``).
    """

    def on_failure(
        self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        """Celery's ``Request.on_failure``, except that a Redis outage requeues the message."""
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        # A Retry means Celery already published the text's next attempt: requeueing this
        # message as well ran the text twice. A retry whose cause was Redis (the shared
        # budget's, unreachable) looked like an outage here and was paid twice.
        if is_redis_outage(exc) and not isinstance(exc, Retry):
            if is_full(exc):
                # Its result found no room: the worker stops fetching until Redis has some.
                note = getattr(getattr(self.message, "channel", None), "note_results_full", None)
                if note is not None:
                    note()
            task_ready(self)
            log.warning("text %s: %s; requeued", self.id, exc)
            return self.reject(requeue=True)
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )
