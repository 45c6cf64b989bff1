"""Enqueue texts as ``embeddings.embed_text`` tasks and wait for their vectors."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence

from celery import Celery
from celery.result import AsyncResult, ResultSet
from kombu.exceptions import OperationalError
from redis.exceptions import OutOfMemoryError, RedisError

from worker.celery_app import app as default_app
from worker.errors import (
    EmbeddingInputTypeError,
    EmbeddingQueueFullError,
    EmbeddingQueueUnavailableError,
)
from worker.names import EMBED_TEXT_TASK
from worker.revocation import RevokeList
from worker.settings import Settings
from worker.validation import validate_model, validate_text, validate_texts

__all__ = [
    "EMBED_TEXT_TASK",
    "REVOKE_REASON",
    "embed_text",
    "embed_texts",
    "enqueue_text",
    "enqueue_texts",
    "failover_waits",
    "queue_error",
    "revoke",
]

# What a revoked text's stored TaskRevokedError says.
REVOKE_REASON = "revoked by producers.revoke"

DEFAULT_WAIT_TIMEOUT_S = 300.0

# A Redis that cannot be reached fails the publish within a few seconds instead of hanging.
_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 1.0,
}


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


_settings: Settings | None = None


def _env_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def _max_chars() -> int:
    return _env_settings().max_text_chars


def _retry_policy(app: Celery) -> dict[str, float]:
    return dict(_PUBLISH_RETRY_POLICY)


def _waits_before_retries(app: Celery) -> list[float]:
    # A plain Redis that does not answer is down: fail now. Behind Sentinel it may be switching.
    if not str(app.conf.broker_url or "").startswith("sentinel://"):
        return []
    return failover_waits(_env_settings().redis_failover_timeout_s)


# Injectable for tests; a producer's thread waits here through a Sentinel failover.
_sleep: Callable[[float], None] = time.sleep


def queue_error(exc: BaseException, doing: str) -> EmbeddingQueueUnavailableError:
    """The typed error for ``exc``, raised while ``doing`` (e.g. "enqueue the text").

    ``EmbeddingQueueFullError`` when Redis refused a write at its ``maxmemory`` (kombu wraps
    that answer as a connection error), else ``EmbeddingQueueUnavailableError``.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OutOfMemoryError):
            return EmbeddingQueueFullError(
                f"could not {doing}: Redis is full (maxmemory reached, noeviction); it takes "
                "texts again once workers drain the queue or Redis gets more memory"
            )
        cause = cause.__cause__ or cause.__context__
    return EmbeddingQueueUnavailableError(f"could not {doing}: the broker is unreachable ({exc})")


def _send(text: str, model: str | None, app: Celery) -> AsyncResult:
    # One task id for every attempt: a publish that reached Redis but whose answer was lost
    # is the same task when sent again, not a second one.
    task_id = str(uuid.uuid4())
    for wait in [*_waits_before_retries(app), None]:
        try:
            return _send_once(text, model, app, task_id)
        except EmbeddingQueueFullError:
            raise
        except EmbeddingQueueUnavailableError:
            if wait is None:
                raise
            _sleep(wait)
    raise AssertionError("unreachable")


def _send_once(text: str, model: str | None, app: Celery, task_id: str) -> AsyncResult:
    kwargs = {"model": model} if model else {}
    try:
        result: AsyncResult = app.send_task(
            EMBED_TEXT_TASK,
            args=(text,),
            kwargs=kwargs,
            task_id=task_id,
            retry=True,
            retry_policy=_retry_policy(app),
        )
    except OperationalError as exc:
        raise queue_error(exc, "enqueue the text") from exc
    except RuntimeError as exc:
        # Celery's Redis result consumer subscribes to the result before the message is sent,
        # and gives up on an unreachable Redis this way; nothing was enqueued.
        if not isinstance(exc.__cause__, RedisError):
            raise
        raise EmbeddingQueueUnavailableError(
            f"could not enqueue the text: the broker is unreachable ({exc.__cause__})"
        ) from exc
    return result


def enqueue_text(text: str, *, model: str | None = None, app: Celery | None = None) -> AsyncResult:
    """Check ``text`` and enqueue it as one task; the result's ``id`` finds its vector later.

    ``model`` is None (the workers' configured model) or a non-empty model name.
    """
    checked = validate_text(text, max_chars=_max_chars())
    return _send(checked, validate_model(model), app or default_app)


def enqueue_texts(
    texts: Iterable[str], *, model: str | None = None, app: Celery | None = None
) -> list[AsyncResult]:
    """Check every text first, then enqueue each as its own task, in order.

    One bad text refuses the whole list before anything is enqueued.
    """
    checked = validate_texts(texts, max_chars=_max_chars())
    checked_model = validate_model(model)
    target = app or default_app
    return [_send(text, checked_model, target) for text in checked]


def embed_text(
    text: str,
    *,
    model: str | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    app: Celery | None = None,
) -> list[float]:
    """Enqueue ``text`` and wait up to ``timeout`` seconds for its vector.

    A failed task re-raises its typed error (e.g. ``EmbeddingAPIError``).
    """
    vector: list[float] = enqueue_text(text, model=model, app=app).get(timeout=timeout)
    return vector


def embed_texts(
    texts: Sequence[str],
    *,
    model: str | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    app: Celery | None = None,
) -> list[list[float]]:
    """Enqueue ``texts`` one task each and wait up to ``timeout`` seconds for all, in order."""
    results = enqueue_texts(texts, model=model, app=app)
    vectors: list[list[float]] = ResultSet(results, app=app or default_app).get(timeout=timeout)
    return vectors


def revoke(task_ids: Iterable[str], *, app: Celery | None = None) -> None:
    """Revoke texts by task id: from now on no worker embeds them, wherever they wait.

    Puts the ids on the fleet's revoke list in Redis (kept ``EMBEDDINGS_RESULT_EXPIRES_S``)
    and stores each text's state as REVOKED, final like SUCCESS: a text already SUCCESS
    keeps its vector, and a text revoked while its call was already under way stays REVOKED.
    Then broadcasts Celery's ``app.control.revoke(ids)`` to the workers running now. A
    worker started later, and a text waiting in a worker's micro-batcher, are covered by
    the list. Raises ``EmbeddingQueueUnavailableError`` when Redis cannot be reached.
    """
    ids = list(task_ids)
    for index, task_id in enumerate(ids):
        if not isinstance(task_id, str) or not task_id:
            raise EmbeddingInputTypeError(
                f"task id at index {index} must be a non-empty str, got {type(task_id).__name__}"
            )
    if not ids:
        return
    target = app or default_app
    backend = target.backend
    try:
        if isinstance(backend, RevokeList):
            backend.remember_revoked(ids, REVOKE_REASON)
        else:
            # Another result backend keeps no list: only the workers running now hear it.
            for task_id in ids:
                backend.mark_as_revoked(task_id, REVOKE_REASON)
        target.control.revoke(ids)
    except (OperationalError, RedisError) as exc:
        raise queue_error(exc, f"revoke {len(ids)} texts") from exc
