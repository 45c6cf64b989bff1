"""The Celery task: one text in, that text's vector out.

Registered as ``embeddings.embed_text`` (``worker.names.EMBED_TEXT_TASK``), the name
producers send. Transient failures that outlast the in-process retries become a Celery retry
with a growing countdown, so a long outage loses nothing; after ``task_max_retries`` the
task ends FAILURE with the typed error.
"""

from __future__ import annotations

import random
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject
from celery.utils.log import get_task_logger

from worker import observability, startup
from worker.celery_app import app
from worker.embeddings.backoff import backoff_delay
from worker.errors import (
    EmbeddingBudgetWaitError,
    EmbeddingCircuitOpenError,
    EmbeddingRateLimitError,
    EmbeddingRetryableError,
    EmbeddingTimeoutError,
)
from worker.microbatcher import MicroBatcherClosed
from worker.names import EMBED_TEXT_TASK, LANE_INTERACTIVE, lane_of_queue
from worker.redaction import task_reprs
from worker.revocation import TextRevoked
from worker.runtime import get_microbatcher, get_settings
from worker.settings import Settings
from worker.validation import validate_text

__all__ = [
    "MIN_RETRY_COUNTDOWN_S",
    "circuit_open_countdown_s",
    "embed_text_task",
    "retry_countdown_s",
]

log = get_task_logger(__name__)

# Each worker process serves /metrics when EMBEDDINGS_METRICS_PORT is set. Connected here,
# in the module only workers load, so a web app that enqueues texts registers no metrics.
observability.connect_signals()
# A worker with no API key for a non-local API refuses to start, naming EMBEDDINGS_API_KEY.
startup.connect_signals()


# Celery publishes the retry, then writes RETRY to the backend. Its stock backend reads, then
# writes, skipping a stored SUCCESS: a re-run that finished in that gap could have its
# SUCCESS overwritten by RETRY (docs/reliability.md). The project's backend
# (worker.celery_ext.result_backend) makes the check and write one step; this floor stays as
# a guard for other backends.
MIN_RETRY_COUNTDOWN_S = 1.0


def retry_countdown_s(retries: int, settings: Settings, random_: float) -> float:
    """Seconds before Celery retry ``retries + 1``: ``backoff_delay`` over the task settings.

    ``task_retry_backoff_s``·2^retries ± ``jitter_factor``, capped at
    ``task_retry_backoff_max_s``, and never less than ``MIN_RETRY_COUNTDOWN_S``.
    ``random_`` is uniform in [0, 1).
    """
    delay = backoff_delay(
        retries + 1,
        initial_s=settings.task_retry_backoff_s,
        max_s=settings.task_retry_backoff_max_s,
        jitter_factor=settings.jitter_factor,
        random=lambda: random_,
    )
    return max(MIN_RETRY_COUNTDOWN_S, delay)


def circuit_open_countdown_s(
    exc: EmbeddingRetryableError, retries: int, settings: Settings, random_: float
) -> float:
    """The retry countdown, but never before the API, the budget or the breaker allow a call.

    An open breaker's remaining time, the shared budget's wait, or a 429's hint
    (``retry_after_s``) plus up to ``task_retry_backoff_s`` of jitter, so a process's
    waiting texts do not return at once.
    """
    countdown = retry_countdown_s(retries, settings, random_)
    hinted = (EmbeddingCircuitOpenError, EmbeddingBudgetWaitError, EmbeddingRateLimitError)
    if isinstance(exc, hinted) and exc.retry_after_s is not None:
        countdown = max(countdown, exc.retry_after_s + settings.task_retry_backoff_s * random_)
    return countdown


def _worst_case_wait_s(settings: Settings) -> float:
    # One text never waits longer than every attempt timing out plus every backoff.
    attempts = settings.max_retries + 1
    return (
        settings.flush_interval_s
        + settings.limiter_max_wait_s
        + attempts * (settings.timeout_s + settings.pool_timeout_s)
        + settings.max_retries * settings.max_backoff_s
        + 5.0
    )


def _lane(request: Any) -> str:
    """The lane of the queue the text was delivered from (docs/lanes.md); eager: interactive."""
    if request.is_eager:
        return LANE_INTERACTIVE
    info = request.delivery_info or {}
    return lane_of_queue(info.get("routing_key"))


@app.task(name=EMBED_TEXT_TASK, bind=True, acks_late=True)  # type: ignore[untyped-decorator]
def embed_text_task(self: Task, text: Any, model: str | None = None) -> list[float]:
    """Embed ``text`` (with ``model``, or the configured one) and return its vector."""
    settings = get_settings()
    checked = validate_text(text, max_chars=settings.max_text_chars)
    try:
        try:
            # Eager runs store no result, so the batched write must not store one either.
            task_id = None if self.request.is_eager else self.request.id
            future = get_microbatcher().submit(
                checked, model, task_id=task_id, lane=_lane(self.request)
            )
            vector = future.result(timeout=_worst_case_wait_s(settings))
            if future.stored_ahead:
                # The call's batched write stored this SUCCESS already: Celery's own write
                # of the return value (mark_as_done) reads this flag and skips it.
                self.request.ignore_result = True
            return vector
        except TimeoutError as exc:
            raise EmbeddingTimeoutError("no answer from the micro-batcher in time") from exc
    except TextRevoked as exc:
        # What Celery does for a request it knows is revoked: store REVOKED, ack, no result.
        log.info("text %s revoked before its call; not embedded", self.request.id)
        self.backend.mark_as_revoked(self.request.id, "revoked", request=self.request)
        self.send_event("task-revoked", terminated=False, signum=None, expired=False)
        raise Ignore() from exc
    except MicroBatcherClosed as exc:
        # This process is shutting down: the text goes back to the queue for another worker.
        raise Reject(str(exc), requeue=True) from exc
    except EmbeddingRetryableError as exc:
        countdown = circuit_open_countdown_s(exc, self.request.retries, settings, random.random())
        log.warning(
            "text %s: %s; Celery retry %d/%d in %.1fs",
            self.request.id,
            exc,
            self.request.retries + 1,
            settings.task_max_retries,
            countdown,
        )
        # Celery builds the retry's message anew and would render the text into it.
        argsrepr, kwargsrepr = task_reprs(
            text, model, show_texts=bool(settings.show_texts), lane=_lane(self.request)
        )
        raise self.retry(
            exc=exc,
            countdown=countdown,
            max_retries=settings.task_max_retries,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
        ) from exc
