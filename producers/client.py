"""Enqueue texts as ``embeddings.embed_text`` tasks and wait for their vectors.

Lists go to a Redis broker, plain or behind Sentinel, ``ENQUEUE_CHUNK_SIZE`` messages per
round trip and their results are read back with one subscription
(``worker.celery_ext.bulk_publish``); other brokers and result backends get one
``send_task`` and one ``AsyncResult`` per text. Behind Sentinel a publish that meets a
failover is sent again, with the same task ids, until ``EMBEDDINGS_REDIS_FAILOVER_TIMEOUT_S``
is spent (``publish_waits``).

Every function takes ``lane=`` (``producers.lanes``): ``"interactive"`` by default, or
``"bulk"`` for a backfill; each text goes to its lane's queue, on every path (a list's
chunks, the per-text fallback, a publish sent again through a failover).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, ResultSet
from kombu.exceptions import OperationalError
from redis.exceptions import OutOfMemoryError, RedisError

from producers.failover import failover_waits, is_failover_error
from producers.lanes import LANE_INTERACTIVE, check_lane, lane_route
from worker.celery_app import app as default_app
from worker.celery_ext import bulk_publish
from worker.errors import (
    EmbeddingInputError,
    EmbeddingInputTypeError,
    EmbeddingPartialEnqueueError,
    EmbeddingPartialQueueFullError,
    EmbeddingQueueFullError,
    EmbeddingQueueUnavailableError,
    EmbeddingResultTimeoutError,
)
from worker.names import EMBED_TEXT_TASK, queue_for_lane
from worker.redaction import task_reprs
from worker.revocation import RevokeList
from worker.settings import Settings
from worker.validation import TokenLimit, token_limit, validate_model, validate_text, validate_texts

__all__ = [
    "EMBED_TEXT_TASK",
    "ENQUEUE_CHUNK_SIZE",
    "REVOKE_REASON",
    "EmbeddingWaitTimeoutError",
    "check_list_size",
    "embed_text",
    "embed_texts",
    "enqueue_ids",
    "enqueue_many",
    "enqueue_text",
    "enqueue_texts",
    "failover_waits",
    "is_failover_error",
    "partial_enqueue_error",
    "producer_settings",
    "publish_id_chunks",
    "publish_retry_policy",
    "publish_waits",
    "queue_error",
    "revoke",
    "wait_all",
]

# What a revoked text's stored TaskRevokedError says.
REVOKE_REASON = "revoked by producers.revoke"

DEFAULT_WAIT_TIMEOUT_S = 300.0
ENQUEUE_CHUNK_SIZE = bulk_publish.DEFAULT_CHUNK_SIZE
"""Texts per Redis round trip (one ``MULTI``/``EXEC``) when a list is enqueued."""

# A Redis that cannot be reached fails the publish within a few seconds instead of hanging.
_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 1.0,
}


_settings: Settings | None = None


def producer_settings() -> Settings:
    """The producers' settings, read from the environment once per process.

    What the producers (sync, asyncio, the gateway) read from them: the longest text, whether
    task renderings show texts, the Sentinel master and password, the failover timeout.
    """
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def _max_chars() -> int:
    return producer_settings().max_text_chars


def _tokens(model: str | None) -> TokenLimit | None:
    return token_limit(producer_settings(), model)


def publish_retry_policy(app: Celery) -> dict[str, float]:
    """kombu's retry policy for one ``send_task``: an unreachable Redis fails within seconds."""
    return dict(_PUBLISH_RETRY_POLICY)


def publish_waits(app: Celery) -> list[float]:
    """Seconds to wait before each new attempt at a publish to ``app``'s broker.

    Behind Sentinel, ``failover_waits(EMBEDDINGS_REDIS_FAILOVER_TIMEOUT_S)``: a master that
    does not answer may be being replaced. For a plain Redis none: one that does not answer
    is down, and the publish fails at once.
    """
    if not str(app.conf.broker_url or "").startswith("sentinel://"):
        return []
    return failover_waits(producer_settings().redis_failover_timeout_s)


# Injectable for tests; a producer's thread waits here through a Sentinel failover.
_sleep: Callable[[float], None] = time.sleep
# Injectable for tests: an ``embed_texts`` deadline counts from the call on this clock.
_clock: Callable[[], float] = time.monotonic


class EmbeddingWaitTimeoutError(EmbeddingResultTimeoutError, CeleryTimeoutError):  # type: ignore[misc]
    """Some texts had no result by a synchronous producer's deadline; they may still finish.

    An ``EmbeddingResultTimeoutError`` (``task_ids``: every text of the call, in input
    order) that is also Celery's ``TimeoutError``, which ``embed_texts`` and ``wait_all``
    raised before and callers may catch. The texts are left queued, not revoked: wait for
    them again with ``wait_all(exc.task_ids, ...)``, or stop them with
    ``revoke(exc.task_ids)`` (a text already done keeps its vector).
    """


def check_list_size(count: int, call: str = "embed_texts") -> None:
    """Refuse a list of ``count`` texts longer than ``EMBEDDINGS_MAX_TEXTS_PER_CALL``.

    Raises ``EmbeddingInputError`` (a ``ValueError``) before anything is enqueued, pointing
    a big input at ``embed-file`` and ``enqueue_texts`` + ``wait_all``.
    """
    cap = producer_settings().max_texts_per_call
    if count > cap:
        raise EmbeddingInputError(
            f"{call} takes at most {cap:,} texts (EMBEDDINGS_MAX_TEXTS_PER_CALL), got "
            f"{count:,}: embed a big input with embed-file (durable, resumable), or "
            "enqueue_texts(lane='bulk') and wait_all in slices"
        )


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


def _show_texts() -> bool:
    return bool(producer_settings().show_texts)


def _send(
    text: str, model: str | None, app: Celery, task_id: str | None = None, *, lane: str
) -> AsyncResult:
    # One task id (and one lane) for every attempt: a publish that reached Redis but whose
    # answer was lost is the same task when sent again, not a second one.
    task_id = task_id or str(uuid.uuid4())
    for wait in [*publish_waits(app), None]:
        try:
            return _send_once(text, model, app, task_id, lane=lane)
        except EmbeddingQueueFullError:
            raise
        except EmbeddingQueueUnavailableError:
            if wait is None:
                raise
            _sleep(wait)
    raise AssertionError("unreachable")


def _send_once(
    text: str, model: str | None, app: Celery, task_id: str, *, lane: str
) -> AsyncResult:
    kwargs = {"model": model} if model else {}
    # Flower, events and `celery inspect` show this rendering and the lane, never the text
    # (by default).
    argsrepr, kwargsrepr = task_reprs(text, model, show_texts=_show_texts(), lane=lane)
    try:
        result: AsyncResult = app.send_task(
            EMBED_TEXT_TASK,
            args=(text,),
            kwargs=kwargs,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            task_id=task_id,
            retry=True,
            retry_policy=publish_retry_policy(app),
            **lane_route(lane),
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


def enqueue_text(
    text: str,
    *,
    model: str | None = None,
    app: Celery | None = None,
    lane: str = LANE_INTERACTIVE,
) -> AsyncResult:
    """Check ``text`` and enqueue it as one task; the result's ``id`` finds its vector later.

    ``model`` is None (the workers' configured model) or a non-empty model name. ``lane``
    is ``"interactive"`` (a user waits) or ``"bulk"`` (a backfill, served after
    interactive texts); anything else raises ``EmbeddingInputError`` before anything is
    enqueued.
    """
    checked_model = validate_model(model)
    checked = validate_text(text, max_chars=_max_chars(), tokens=_tokens(checked_model))
    return _send(checked, checked_model, app or default_app, lane=check_lane(lane))


def _broker_error(exc: BaseException) -> BaseException | None:
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


def _partial(cause: BaseException, done: list[AsyncResult], total: int) -> Exception:
    return partial_enqueue_error(cause, done, total)


def enqueue_many(
    texts: Sequence[str],
    *,
    model: str | None = None,
    app: Celery | None = None,
    chunk_size: int = ENQUEUE_CHUNK_SIZE,
    lane: str = LANE_INTERACTIVE,
) -> list[AsyncResult]:
    """Enqueue already-checked ``texts`` in ``lane``, in order, ``chunk_size`` per round trip.

    Raises ``EmbeddingPartialEnqueueError`` naming what was enqueued when the broker fails
    midway (behind Sentinel: once a chunk's failover retries are spent).
    """
    target = app or default_app
    lane = check_lane(lane)
    calls = _calls(texts, model)
    task_ids = _fresh_ids(len(texts))
    done: list[AsyncResult] = []

    def send_from(start: int) -> Iterator[list[AsyncResult]]:
        return bulk_publish.publish_chunks(
            target,
            EMBED_TEXT_TASK,
            calls[start:],
            chunk_size=chunk_size,
            reprs=_reprs_in(lane),
            task_ids=task_ids[start:],
            queue=queue_for_lane(lane),
        )

    try:
        _through_failover(target, send_from, done)
    except bulk_publish.BulkPublishUnsupported:
        return _send_each(texts, model, target, lane=lane)
    except Exception as exc:
        error = _failed(exc, done, len(texts))
        if error is exc:
            raise
        raise error from exc
    return done


def enqueue_ids(
    texts: Sequence[str],
    *,
    model: str | None = None,
    app: Celery | None = None,
    chunk_size: int = ENQUEUE_CHUNK_SIZE,
    task_ids: Sequence[str] | None = None,
    lane: str = LANE_INTERACTIVE,
) -> list[str]:
    """``enqueue_many``, returning task ids for ``wait_all``, with no per-text subscription.

    ``task_ids``, one per text, replace fresh ids (say, ids derived from the input).
    """
    target = app or default_app
    lane = check_lane(lane)
    if task_ids is not None and len(task_ids) != len(texts):
        raise ValueError(f"{len(task_ids)} task ids for {len(texts)} texts")
    ids = list(task_ids) if task_ids is not None else _fresh_ids(len(texts))
    done: list[str] = []

    def send_from(start: int) -> Iterator[list[str]]:
        return publish_id_chunks(
            texts[start:],
            model=model,
            task_ids=ids[start:],
            app=target,
            chunk_size=chunk_size,
            lane=lane,
        )

    try:
        _through_failover(target, send_from, done)
    except bulk_publish.BulkPublishUnsupported:
        return [result.id for result in _send_each(texts, model, target, task_ids, lane=lane)]
    except Exception as exc:
        error = _failed(exc, [target.AsyncResult(i) for i in done], len(texts))
        if error is exc:
            raise
        raise error from exc
    return done


def publish_id_chunks(
    texts: Sequence[str],
    *,
    model: str | None,
    task_ids: Sequence[str],
    app: Celery,
    chunk_size: int = ENQUEUE_CHUNK_SIZE,
    lane: str = LANE_INTERACTIVE,
) -> Iterator[list[str]]:
    """Send already-checked ``texts`` as tasks ``task_ids`` to ``lane``, a transaction a chunk.

    The bulk path alone (``bulk_publish.publish_chunk_ids``, with the texts shown redacted):
    no per-text fallback, no failover retry, no subscription. Yields each chunk's ids once
    Redis committed it; raises ``bulk_publish.BulkPublishUnsupported`` before sending
    anything when the broker or a route needs ``send_task``.
    """
    lane = check_lane(lane)
    return bulk_publish.publish_chunk_ids(
        app,
        EMBED_TEXT_TASK,
        _calls(texts, model),
        chunk_size=chunk_size,
        reprs=_reprs_in(lane),
        task_ids=task_ids,
        queue=queue_for_lane(lane),
    )


def _fresh_ids(count: int) -> list[str]:
    # Chosen before the first attempt, so a chunk sent again is the same tasks.
    return [str(uuid.uuid4()) for _ in range(count)]


def _through_failover(
    app: Celery, send_from: Callable[[int], Iterator[list[Any]]], done: list[Any]
) -> None:
    """Extend ``done`` with every chunk ``send_from(len(done))`` commits, through a failover.

    ``send_from(start)`` sends the calls from index ``start`` on, with their fixed task ids.
    Behind Sentinel a chunk that fails with ``is_failover_error`` is sent again from its
    first text after each of ``publish_waits``; a chunk that goes through gives the next
    failing one the whole schedule again, as each text sent singly has it. Re-raises the
    error once the waits are spent, or at once for any other error and on plain Redis;
    ``done`` then holds exactly the chunks committed. ``MULTI``/``EXEC`` makes a failed
    chunk all or nothing, so sending it again cannot enqueue a text twice, except when
    the reply to an ``EXEC`` that ran was lost (docs/reliability.md).
    """
    waits = publish_waits(app)
    left = waits
    while True:
        try:
            for chunk in send_from(len(done)):
                done.extend(chunk)
                left = waits
            return
        except bulk_publish.BulkPublishUnsupported:
            raise
        except Exception as exc:
            if not left or not is_failover_error(exc):
                raise
            _sleep(left[0])
            left = left[1:]


def _reprs_in(lane: str) -> bulk_publish.Reprs:
    """The same redacted rendering as a text sent singly (``worker.redaction``), and its lane."""
    show_texts = _show_texts()

    def reprs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
        return task_reprs(args[0], kwargs.get("model"), show_texts=show_texts, lane=lane)

    return reprs


def _calls(texts: Sequence[str], model: str | None) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    checked = validate_model(model)
    kwargs: dict[str, Any] = {"model": checked} if checked else {}
    return [((text,), kwargs) for text in texts]


def _failed(exc: Exception, done: list[AsyncResult], total: int) -> Exception:
    cause = _broker_error(exc)
    if cause is None:
        return exc
    return _partial(cause, done, total)


def _send_each(
    texts: Sequence[str],
    model: str | None,
    app: Celery,
    task_ids: Sequence[str] | None = None,
    *,
    lane: str,
) -> list[AsyncResult]:
    done: list[AsyncResult] = []
    for i, text in enumerate(texts):
        task_id = task_ids[i] if task_ids is not None else None
        try:
            done.append(_send(text, model, app, task_id, lane=lane))
        except EmbeddingQueueUnavailableError as exc:
            raise _partial(exc.__cause__ or exc, done, len(texts)) from exc
    return done


def enqueue_texts(
    texts: Iterable[str],
    *,
    model: str | None = None,
    app: Celery | None = None,
    chunk_size: int = ENQUEUE_CHUNK_SIZE,
    lane: str = LANE_INTERACTIVE,
) -> list[AsyncResult]:
    """Check every text first, then enqueue each as its own task in ``lane``, in order.

    One bad text (or a bad ``model`` or ``lane``) refuses the whole list before anything
    is enqueued. On Redis, texts go
    ``chunk_size`` per round trip, each chunk all or nothing. If the broker fails midway,
    ``EmbeddingPartialEnqueueError`` (an ``EmbeddingQueueUnavailableError``) holds the
    ``AsyncResult``\\s of the texts that were enqueued and the index of the first that was not;
    when Redis is full it is ``EmbeddingPartialQueueFullError``, an ``EmbeddingQueueFullError``
    too.

    To wait for many, prefer ``wait_all([r.id for r in results], ...)``: Celery 5.7's
    ``ResultSet.join_native`` leaves the last result None once any of them was waited for
    with ``get()`` (docs/reliability.md, "Known upstream issues").
    """
    checked_model = validate_model(model)
    checked = validate_texts(texts, max_chars=_max_chars(), tokens=_tokens(checked_model))
    return enqueue_many(
        checked, model=checked_model, app=app, chunk_size=chunk_size, lane=check_lane(lane)
    )


def wait_all(task_ids: Sequence[str], timeout_s: float, app: Celery) -> list[list[float]]:
    """The vectors of ``task_ids``' texts, in order, waiting up to ``timeout_s`` s in all.

    Re-raises the first failed text's typed error (in input order); raises
    ``EmbeddingWaitTimeoutError`` (Celery's ``TimeoutError`` too, ``task_ids`` set) when
    some are still missing at the deadline. A Redis blip meanwhile is
    ridden out (the subscription is made anew and every result stored meanwhile is read);
    Redis still unreachable at the deadline raises ``EmbeddingResultStoreUnavailableError``.
    """
    timeout_s = max(0.0, timeout_s)  # embed_texts may have spent it all enqueueing
    if not bulk_publish.supports_bulk_wait(app):
        results = [app.AsyncResult(task_id) for task_id in task_ids]
        try:
            vectors: list[list[float]] = ResultSet(results, app=app).get(timeout=timeout_s)
        except CeleryTimeoutError as exc:
            raise EmbeddingWaitTimeoutError(
                f"some of {len(task_ids)} texts had no result in time ({timeout_s:g}s of "
                "waiting); they may still finish (the error's task_ids)",
                task_ids=task_ids,
            ) from exc
        return vectors
    outcomes = bulk_publish.SyncResultWaiter(app).wait(task_ids, timeout_s)
    for i in range(len(task_ids)):
        if isinstance(outcomes.get(i), BaseException):
            raise outcomes[i]
    if len(outcomes) < len(task_ids):
        raise EmbeddingWaitTimeoutError(
            f"{len(task_ids) - len(outcomes)} of {len(task_ids)} texts had no result in time "
            f"({timeout_s:g}s of waiting); they may still finish (the error's task_ids)",
            task_ids=task_ids,
        )
    return [outcomes[i] for i in range(len(task_ids))]


def embed_text(
    text: str,
    *,
    model: str | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    app: Celery | None = None,
    lane: str = LANE_INTERACTIVE,
) -> list[float]:
    """Enqueue ``text`` in ``lane`` and wait up to ``timeout`` seconds for its vector.

    A failed task re-raises its typed error (e.g. ``EmbeddingAPIError``). On Redis the
    wait is ``wait_all``'s: it rides out a Redis blip, honours a short timeout, and raises
    ``EmbeddingWaitTimeoutError`` (Celery's ``TimeoutError`` too) naming the task id.
    """
    deadline = _clock() + timeout
    result = enqueue_text(text, model=model, app=app, lane=lane)
    target = app or default_app
    if bulk_publish.supports_bulk_wait(target):
        return wait_all([result.id], deadline - _clock(), target)[0]
    vector: list[float] = result.get(timeout=timeout)
    return vector


def embed_texts(
    texts: Sequence[str],
    *,
    model: str | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    app: Celery | None = None,
    lane: str = LANE_INTERACTIVE,
) -> list[list[float]]:
    """Enqueue ``texts`` one task each in ``lane``; wait up to ``timeout`` s for all, in order.

    ``timeout`` counts from the call, enqueueing included. A failed text re-raises its
    typed error; a deadline passed raises ``EmbeddingWaitTimeoutError`` (Celery's
    ``TimeoutError`` and an ``EmbeddingResultTimeoutError``) whose ``task_ids`` name every
    text, left queued: revoke them, or wait again. At most
    ``EMBEDDINGS_MAX_TEXTS_PER_CALL`` (2,048) texts (``check_list_size``). Results are read
    with one subscription, not one per text, through a Redis blip (``wait_all``).
    """
    deadline = _clock() + timeout
    target = app or default_app
    checked_model = validate_model(model)
    checked = validate_texts(texts, max_chars=_max_chars(), tokens=_tokens(checked_model))
    lane = check_lane(lane)
    check_list_size(len(checked))
    if not bulk_publish.supports_bulk_wait(target):
        results = enqueue_many(checked, model=checked_model, app=target, lane=lane)
        return wait_all([r.id for r in results], deadline - _clock(), target)
    ids = enqueue_ids(checked, model=checked_model, app=target, lane=lane)
    return wait_all(ids, deadline - _clock(), target)


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
