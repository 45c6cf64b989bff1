"""The synchronous producers: enqueue texts as ``embeddings.embed_text`` tasks, wait for vectors.

A thin shell over ``producers.core``: it sends through the Celery layer (lists on Redis a
chunk per transaction, ``worker.celery_ext.bulk_publish``; else one ``send_task`` a text),
sleeps through a Sentinel failover as the core's ``Failover`` says (``publish_waits``), and
sends each text to its lane's queue (``lane=``, ``producers.lanes``) on every path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, ResultSet
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from producers import core
from producers.core import (
    enqueue_failure,
    failover_waits,
    is_failover_error,
    partial_enqueue_error,
    queue_error,
)
from producers.lanes import LANE_INTERACTIVE, check_lane, lane_route
from worker.celery_app import app as default_app
from worker.celery_ext import bulk_publish
from worker.errors import (
    EmbeddingInputError,
    EmbeddingInputTypeError,
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
    "reprs_in",
    "revoke",
    "wait_all",
]

# What a revoked text's stored TaskRevokedError says.
REVOKE_REASON = "revoked by producers.revoke"

DEFAULT_WAIT_TIMEOUT_S = 300.0
ENQUEUE_CHUNK_SIZE = bulk_publish.DEFAULT_CHUNK_SIZE
"""Texts per Redis round trip (one ``MULTI``/``EXEC``) when a list is enqueued."""

# A Redis that cannot be reached fails the publish within a few seconds instead of hanging.
# The producers' own, whatever the app's task_publish_retry_policy: an app's policy may retry
# for ever, and the failover schedule (publish_waits) already retries around this one.
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


def publish_retry_policy() -> dict[str, float]:
    """kombu's retry policy for one producer publish: an unreachable Redis fails within seconds.

    The same for every app: the app's own ``task_publish_retry_policy`` is not consulted.
    """
    return dict(_PUBLISH_RETRY_POLICY)


def publish_waits(app: Celery) -> list[float]:
    """Seconds to wait before each new attempt at a publish to ``app``'s broker (``core``)."""
    broker_url = str(app.conf.broker_url or "")
    return core.publish_waits(broker_url, producer_settings().redis_failover_timeout_s)


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


def _show_texts() -> bool:
    return bool(producer_settings().show_texts)


def _send(
    text: str, model: str | None, app: Celery, task_id: str | None = None, *, lane: str
) -> AsyncResult:
    # One task id (and one lane) for every attempt: a publish that reached Redis but whose
    # answer was lost is the same task when sent again, not a second one.
    task_id = task_id or core.fresh_ids(1)[0]
    sent: list[AsyncResult] = []
    _through_failover(
        app,
        lambda _start: iter([[_send_once(text, model, app, task_id, lane=lane)]]),
        sent,
        retry_if=core.is_unreachable,
    )
    return sent[0]


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
            retry_policy=publish_retry_policy(),
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
    publish = bulk_publish.publish_chunks
    done = _enqueue_chunks(publish, texts, model, target, chunk_size, lane, None, list)
    return _send_each(texts, model, target, lane=lane) if done is None else done


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

    def results(ids: list[str]) -> list[AsyncResult]:
        return [target.AsyncResult(task_id) for task_id in ids]

    publish = bulk_publish.publish_chunk_ids
    done = _enqueue_chunks(publish, texts, model, target, chunk_size, lane, task_ids, results)
    if done is None:
        return [result.id for result in _send_each(texts, model, target, task_ids, lane=lane)]
    return done


def _enqueue_chunks(
    publish: Callable[..., Iterator[list[Any]]],
    texts: Sequence[str],
    model: str | None,
    app: Celery,
    chunk_size: int,
    lane: str,
    task_ids: Sequence[str] | None,
    results: Callable[[list[Any]], list[Any]],
) -> list[Any] | None:
    """Send ``texts`` with ``publish`` (a ``bulk_publish`` function), through a failover.

    What each committed chunk yields, in order; None when the bulk path cannot send these
    texts (nothing was sent). A broker failure raises the partial-enqueue error, whose
    ``enqueued`` is ``results(`` what went through ``)``.
    """
    lane = check_lane(lane)
    if task_ids is not None and len(task_ids) != len(texts):
        raise ValueError(f"{len(task_ids)} task ids for {len(texts)} texts")
    ids = list(task_ids) if task_ids is not None else core.fresh_ids(len(texts))
    calls = core.calls(texts, validate_model(model))
    done: list[Any] = []

    def send_from(start: int) -> Iterator[list[Any]]:
        return publish(
            app,
            EMBED_TEXT_TASK,
            calls[start:],
            chunk_size=chunk_size,
            reprs=reprs_in(lane),
            task_ids=ids[start:],
            queue=queue_for_lane(lane),
        )

    try:
        _through_failover(app, send_from, done)
    except bulk_publish.BulkPublishUnsupported:
        return None
    except Exception as exc:
        error = enqueue_failure(exc, results(done), len(texts))
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
        core.calls(texts, validate_model(model)),
        chunk_size=chunk_size,
        reprs=reprs_in(lane),
        task_ids=task_ids,
        queue=queue_for_lane(lane),
    )


def _through_failover(
    app: Celery,
    send_from: Callable[[int], Iterator[list[Any]]],
    done: list[Any],
    retry_if: Callable[[BaseException], bool] = is_failover_error,
) -> None:
    """Extend ``done`` with every chunk ``send_from(start)`` commits, through a failover.

    ``send_from(start)`` sends the calls from index ``start`` on, with their fixed task ids;
    ``core.Failover`` says when to send again, and from where. Re-raises the error once it
    gives up; ``done`` then holds exactly the chunks committed. ``MULTI``/``EXEC`` makes a
    failed chunk all or nothing, so sending it again cannot enqueue a text twice, except
    when the reply to an ``EXEC`` that ran was lost (docs/reliability.md).
    """
    plan = core.Failover(publish_waits(app), retry_if)
    while True:
        try:
            for chunk in send_from(plan.done):
                done.extend(chunk)
                plan.committed(len(chunk))
            return
        except Exception as exc:
            step = plan.failed(exc)
            if step is None:
                raise
            _sleep(step.wait_s)


def reprs_in(lane: str) -> bulk_publish.Reprs:
    """The same redacted rendering as a text sent singly (``worker.redaction``), and its lane."""
    show_texts = _show_texts()

    def reprs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, str | None]:
        return task_reprs(args[0], kwargs.get("model"), show_texts=show_texts, lane=lane)

    return reprs


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
            raise enqueue_failure(exc, done, len(texts)) from exc
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
