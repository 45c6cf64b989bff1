"""Enqueue texts as ``embeddings.embed_text`` tasks and wait for their vectors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from celery import Celery
from celery.result import AsyncResult, ResultSet
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from worker.celery_app import app as default_app
from worker.errors import EmbeddingQueueUnavailableError
from worker.names import EMBED_TEXT_TASK
from worker.redaction import task_reprs
from worker.settings import Settings
from worker.validation import validate_model, validate_text, validate_texts

__all__ = ["EMBED_TEXT_TASK", "embed_text", "embed_texts", "enqueue_text", "enqueue_texts"]

DEFAULT_WAIT_TIMEOUT_S = 300.0

# A Redis that cannot be reached fails the publish within a few seconds instead of hanging.
_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 1.0,
}

_settings: Settings | None = None


def _producer_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def _max_chars() -> int:
    return _producer_settings().max_text_chars


def _show_texts() -> bool:
    return bool(_producer_settings().show_texts)


def _send(text: str, model: str | None, app: Celery) -> AsyncResult:
    kwargs = {"model": model} if model else {}
    # Flower, events and `celery inspect` show this rendering, never the text (by default).
    argsrepr, kwargsrepr = task_reprs(text, model, show_texts=_show_texts())
    try:
        result: AsyncResult = app.send_task(
            EMBED_TEXT_TASK,
            args=(text,),
            kwargs=kwargs,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            retry=True,
            retry_policy=_PUBLISH_RETRY_POLICY,
        )
    except OperationalError as exc:
        raise EmbeddingQueueUnavailableError(
            f"could not enqueue the text: the broker is unreachable ({exc})"
        ) from exc
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
