"""Bulk enqueue and bulk wait on Redis: one transaction per chunk of tasks, one subscription.

Serves ``redis://``, ``rediss://`` and ``sentinel://`` brokers. kombu's ``SentinelChannel``
(and the project's ``SentinelAtomicFetchChannel`` on it) is kombu's Redis ``Channel`` with a
pool that asks the Sentinels for the master: it inherits ``basic_publish``, ``_put`` and
``_put_fanout`` unchanged, so the collector below gets the same commands, and the chunk's
``MULTI``/``EXEC`` goes to the current master through the channel's client.

**Publish.** ``send_task`` costs a producer ~1.3 ms per text: two Redis round trips (the
message, then its ``task-sent`` event) and kombu's and Celery's per-publish machinery
(connection ``ensure`` wrappers, pool acquisition, declarations). ``publish_chunks`` builds
each message the way ``send_task`` does (``app.amqp.create_task_message``, Celery's router,
``kombu.serialization.dumps``, the channel's ``prepare_message`` and ``basic_publish``) but
hands kombu's Redis channel a collector, so the channel's own routing, priority key,
base64 body encoding, delivery tag and JSON dump produce the ``LPUSH`` it would have sent.
A chunk's ``LPUSH``\\es and one ``task.multi`` event message carrying every ``task-sent``
event of the chunk (the batch form Celery's own worker uses) then go to Redis in one
``MULTI``/``EXEC``: a chunk is enqueued whole or not at all. The one exception is a reply
lost after Redis ran ``EXEC`` (the connection cut at that instant): the chunk is then
enqueued but reported as failed. This module never re-sends a chunk; behind Sentinel the
producers do (``producers.client``, through a failover, with the same task ids), and a
lost reply is then the one case where a chunk is enqueued twice (docs/reliability.md).

**One message a text.** ``publish_each`` sends what ``send_task`` would, for a broker or a
route ``publish_chunks`` cannot serve, without subscribing to the results.

**Wait.** ``SyncResultWaiter`` and ``ResultFeed`` (``worker.celery_ext.result_feed``, re-exported
here) wait for many results with one subscription and ``MGET``\\s instead of Celery's
per-result promise.

Needs kombu's Redis channel to accept a publish collector (``_publish_batch``, kombu 5.7):
checked at import by ``worker.celery_ext.compat``. Written against Celery 5.7 and kombu 5.7.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from celery import Celery, signals
from celery.events import Event
from celery.events.event import get_exchange
from celery.result import AsyncResult
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import utcoffset
from kombu import common as kombu_common
from kombu import compression as kombu_compression
from kombu import entity as kombu_entity
from kombu import serialization as kombu_serialization
from kombu.utils.uuid import uuid

from worker.celery_ext import compat
from worker.celery_ext.result_feed import (
    DEFAULT_READ_CHUNK,
    ResultFeed,
    SyncResultWaiter,
    supports_bulk_wait,
)
from worker.celery_ext.subscriptions import subscribe_results
from worker.redis_client import CELERY_REDIS_SCHEMES, SENTINEL_SCHEME

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_READ_CHUNK",
    "BulkPublishUnsupported",
    "ResultFeed",
    "SyncResultWaiter",
    "publish_chunk_ids",
    "publish_chunks",
    "publish_each",
    "supports_bulk_publish",
    "supports_bulk_wait",
]


DEFAULT_CHUNK_SIZE = 500
"""Messages per ``MULTI``/``EXEC``: about 0.5 MB for texts of 1,000 characters."""

# kombu is untyped; these are its public helpers, used as kombu itself uses them.
_maybe_declare: Any = kombu_common.maybe_declare
_compress: Any = kombu_compression.compress
_maybe_delivery_mode: Any = kombu_entity.maybe_delivery_mode
_dumps: Any = kombu_serialization.dumps

# Brokers reached through a kombu Redis channel: plain, TLS, or the master Sentinels name.
_REDIS_SCHEMES = (*CELERY_REDIS_SCHEMES, SENTINEL_SCHEME)


# The private names used here are listed, and checked at import, in worker/celery_ext/compat.py.
compat.check_once()


def _scheme(url: Any) -> str:
    return str(url or "").split("://", 1)[0].split("+")[-1]


def _replay_safe(connection_kwargs: dict[str, Any]) -> bool:
    # A redis-py client that retries a failed pipeline would re-send a transaction whose
    # EXEC may already have run: a chunk enqueued twice.
    retry = connection_kwargs.get("retry")
    retries = retry.get_retries() if retry is not None else 0
    return not (
        retries
        or connection_kwargs.get("retry_on_timeout")
        or connection_kwargs.get("retry_on_error")
    )


def supports_bulk_publish(app: Celery) -> bool:
    """True when ``app``'s broker is Redis or Sentinel, where ``publish_chunks`` can be used."""
    return _scheme(app.conf.broker_url) in _REDIS_SCHEMES


class _Collector:
    """Receives the Redis commands kombu's channel would have run for one publish."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


class _Settings:
    """The settings one publish reads, looked up once: ``app.conf`` costs ~20 µs a read."""

    def __init__(self, app: Celery) -> None:
        conf = app.conf
        self.serializer: str = conf.task_serializer
        self.compression: str | None = conf.task_compression
        self.retry_policy: dict[str, Any] = conf.task_publish_retry_policy
        self.delivery_mode: Any = conf.task_default_delivery_mode
        self.repr_maxlevels: int = conf.task_repr_maxlevels
        self.event_serializer: str = conf.event_serializer
        self.event_exchange: str = conf.event_exchange
        self.sent_events = bool(conf.task_send_sent_event)
        self.routes = bool(conf.task_routes)


class _Destination:
    """Where ``send_task`` would send a task, worked out as its message sender does."""

    def __init__(self, app: Celery, settings: _Settings, options: dict[str, Any]) -> None:
        amqp = app.amqp
        unsupported = set(options) - {"queue", "exchange", "routing_key", "priority"}
        if unsupported:
            raise _NotBulkable(f"route options {sorted(unsupported)}")
        queue, exchange = options.get("queue"), options.get("exchange")
        routing_key = options.get("routing_key")
        self.priority = options.get("priority")
        if queue is None and exchange is None:
            queue = amqp.default_queue
        if isinstance(queue, str):
            queue = amqp.queues[queue]
        if queue is None or (queue.exchange.type or "direct") != "direct":
            raise _NotBulkable("a destination other than a direct queue")
        if exchange and routing_key:
            # Routing through a named exchange reads its bindings from Redis per message.
            raise _NotBulkable("an explicit exchange and routing key")
        self.queue = queue
        self.qname: str = queue.name
        mode = queue.exchange.delivery_mode or settings.delivery_mode
        self.delivery_mode = _maybe_delivery_mode(mode)


# ``(args, kwargs) -> (argsrepr, kwargsrepr)``; a None is rendered as Celery would.
Reprs = Callable[[tuple[Any, ...], dict[str, Any]], tuple[str | None, str | None]]


class _NotBulkable(Exception):
    """This publish needs ``send_task``'s general path (say, a topic exchange)."""


class BulkPublishUnsupported(ValueError):
    """``publish_chunks`` cannot send these tasks; nothing was sent (use ``send_task``)."""


def publish_chunks(
    app: Celery,
    name: str,
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    reprs: Reprs | None = None,
    task_ids: Sequence[str] | None = None,
    queue: str | None = None,
) -> Iterator[list[AsyncResult]]:
    """Send one ``name`` task per ``(args, kwargs)`` of ``calls``, a chunk per transaction.

    Yields each chunk's ``AsyncResult``\\s, in order, once Redis has committed the chunk.
    Each result is subscribed to before its message is sent (a chunk's results in one
    ``SUBSCRIBE``: ``worker.celery_ext.subscriptions``), and joins the current task's trail,
    as ``send_task`` does, so ``AsyncResult.get()`` and ``join_native`` work as usual. An exception
    (kombu's ``OperationalError``, redis-py's ``RedisError``, or the result consumer's
    ``RuntimeError``) means the chunk being sent was not enqueued, nor any after it; the
    chunks yielded before it were. Raises ``BulkPublishUnsupported``, before sending
    anything, when the broker is not Redis or a task routes where only ``send_task`` goes.
    ``reprs`` gives each task's displayed arguments (Flower, events, logs), as
    ``send_task(argsrepr=…, kwargsrepr=…)`` does. ``task_ids`` (one per call) replace
    fresh ids, so a caller that sends a failed chunk again sends the same tasks. ``queue``
    names the queue every task goes to, with the queue's name as routing key, as
    ``send_task(queue=…, exchange="", routing_key=…)`` does, whatever ``task_routes`` say;
    None: where Celery's router sends the task.
    """
    parent = app.current_worker_task
    sent = _publish(
        app, name, calls, chunk_size, subscribe=True, reprs=reprs, task_ids=task_ids, queue=queue
    )
    for chunk_ids in sent:
        results = []
        for task_id in chunk_ids:
            result = app.AsyncResult(task_id)
            result.ignored = None
            if parent is not None:
                parent.add_trail(result)
            results.append(result)
        yield results


def publish_chunk_ids(
    app: Celery,
    name: str,
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    reprs: Reprs | None = None,
    task_ids: Sequence[str] | None = None,
    queue: str | None = None,
) -> Iterator[list[str]]:
    """``publish_chunks`` yielding task ids, with no subscription and no ``AsyncResult``.

    For callers that wait with ``SyncResultWaiter``: an ``AsyncResult`` costs ~30 µs more per
    text, most of it its destructor's unsubscribe. ``task_ids`` (one per call) are used
    instead of fresh ones: a caller that derives them from its input can find a task it
    sent before. ``queue`` as for ``publish_chunks``.
    """
    return _publish(
        app, name, calls, chunk_size, subscribe=False, reprs=reprs, task_ids=task_ids, queue=queue
    )


def publish_each(
    app: Celery,
    name: str,
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    *,
    task_ids: Sequence[str],
    reprs: Reprs | None = None,
    queue: str | None = None,
    retry_policy: dict[str, Any] | None = None,
) -> None:
    """Send one ``name`` task per call of ``calls``, a message each, on one pooled producer.

    Each message is built and routed as ``send_task`` builds and routes it (Celery's
    ``app.amqp`` and router), but no result is subscribed to (``backend.on_task_call``):
    for callers that wait otherwise. ``task_ids``, ``reprs`` and ``queue`` as for
    ``publish_chunks``; ``retry_policy`` is kombu's, per message. A broker error is raised
    as kombu or redis-py raised it; the tasks before the failing one were sent.
    """
    if len(task_ids) != len(calls):
        raise ValueError(f"{len(task_ids)} task ids for {len(calls)} calls")
    amqp = app.amqp
    route = {} if queue is None else {"queue": queue, "exchange": "", "routing_key": queue}
    with app.producer_or_acquire() as producer:
        for task_id, (args, kwargs) in zip(task_ids, calls, strict=True):
            options = amqp.router.route(dict(route), name, args, kwargs, None)
            argsrepr, kwargsrepr = reprs(args, kwargs) if reprs else (None, None)
            message = amqp.create_task_message(
                task_id,
                name,
                args,
                kwargs,
                reply_to=app.thread_oid,
                create_sent_event=app.conf.task_send_sent_event,
                ignore_result=None,  # what send_task passes when not told
                argsrepr=argsrepr,
                kwargsrepr=kwargsrepr,
            )
            if reprs is not None:
                # send_task hands its argsrepr/kwargsrepr options to kombu as properties.
                options.update(argsrepr=argsrepr, kwargsrepr=kwargsrepr)
            amqp.send_task_message(
                producer, name, message, retry=True, retry_policy=retry_policy, **options
            )


def _publish(
    app: Celery,
    name: str,
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    chunk_size: int,
    *,
    subscribe: bool,
    reprs: Reprs | None = None,
    task_ids: Sequence[str] | None = None,
    queue: str | None = None,
) -> Iterator[list[str]]:
    if task_ids is not None and len(task_ids) != len(calls):
        raise ValueError(f"{len(task_ids)} task ids for {len(calls)} calls")
    if not supports_bulk_publish(app):
        scheme = _scheme(app.conf.broker_url)
        raise BulkPublishUnsupported(f"bulk publish needs a Redis or Sentinel broker, not {scheme}")
    settings = _Settings(app)
    destinations = _destinations(app, settings, name, calls, queue)
    parent = app.current_worker_task
    root_id = parent_id = None
    if parent is not None:
        root_id = parent.request.root_id or parent.request.id
        parent_id = parent.request.id
    reply_to = app.thread_oid
    argsrepr_max, kwargsrepr_max = app.amqp.argsrepr_maxsize, app.amqp.kwargsrepr_maxsize
    origin = anon_nodename()
    pid = os.getpid()
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=2, interval_start=0.2, interval_max=1)
        channel = producer.channel
        client = channel.client
        if not _replay_safe(client.connection_pool.connection_kwargs):
            raise BulkPublishUnsupported("bulk publish needs a broker client that never retries")
        event_exchange = get_exchange(producer.connection, name=settings.event_exchange)
        declared_queue = None
        for start in range(0, len(calls), chunk_size):
            collector = _Collector()
            chunk_ids: list[str] = []
            events: list[dict[str, Any]] = []
            published: list[tuple[dict[str, Any], Any, str]] = []
            for offset in range(start, min(start + chunk_size, len(calls))):
                args, kwargs = calls[offset]
                where = destinations[offset]
                if where.queue is not declared_queue:
                    _maybe_declare(where.queue, channel)  # cached per channel: I/O only once
                    declared_queue = where.queue
                task_id = uuid() if task_ids is None else task_ids[offset]
                argsrepr, kwargsrepr = reprs(args, kwargs) if reprs else (None, None)
                # Else the reprs Celery would make, made here: it reads two settings a message.
                if argsrepr is None:
                    argsrepr = saferepr(args, argsrepr_max, maxlevels=settings.repr_maxlevels)
                if kwargsrepr is None:
                    kwargsrepr = saferepr(kwargs, kwargsrepr_max, maxlevels=settings.repr_maxlevels)
                headers, properties, body, sent_event = app.amqp.create_task_message(
                    task_id,
                    name,
                    args,
                    kwargs,
                    reply_to=reply_to,
                    create_sent_event=settings.sent_events,
                    argsrepr=argsrepr,
                    kwargsrepr=kwargsrepr,
                    root_id=root_id,
                    parent_id=parent_id,
                    origin=origin,
                    ignore_result=None,
                )
                if reprs is not None:
                    # send_task hands its argsrepr/kwargsrepr options to kombu as properties.
                    properties.update(argsrepr=argsrepr, kwargsrepr=kwargsrepr)
                _send_message(settings, channel, collector, name, where, headers, properties, body)
                published.append((headers, body, where.qname))
                if sent_event is not None:
                    sent_event.update(queue=where.qname, exchange="", routing_key=where.qname)
                    events.append(
                        Event(
                            "task-sent",
                            hostname=origin,
                            utcoffset=utcoffset(),
                            pid=pid,
                            clock=app.clock.forward(),
                            **sent_event,
                        )
                    )
                chunk_ids.append(task_id)
            if subscribe:
                # Before the chunk is sent, as send_task does: one SUBSCRIBE for the chunk.
                subscribe_results(app.backend, producer, chunk_ids)
            if events:
                _send_events(settings, channel, collector, event_exchange, origin, events)
            with client.pipeline(transaction=True) as pipe:
                for command, command_args in collector.commands:
                    getattr(pipe, command)(*command_args)
                pipe.execute()
            for headers, body, qname in published:
                signals.after_task_publish.send(
                    sender=name, body=body, headers=headers, exchange="", routing_key=qname
                )
            yield chunk_ids


def _destinations(
    app: Celery,
    settings: _Settings,
    name: str,
    calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
    queue: str | None = None,
) -> list[_Destination]:
    """Each call's destination, from Celery's router; once for all when no routes are set.

    With ``queue``, the options ``send_task(queue=queue, exchange="", routing_key=queue)``
    passes the router: they win over any route, so every call goes to ``queue``.
    """
    router = app.amqp.router
    options: dict[str, Any] = {}
    if queue is not None:
        options = {"queue": queue, "exchange": "", "routing_key": queue}
    try:
        if not settings.routes and calls:
            args, kwargs = calls[0]
            route = router.route(dict(options), name, args, kwargs, None)
            return [_Destination(app, settings, route)] * len(calls)
        return [
            _Destination(app, settings, router.route(dict(options), name, a, k, None))
            for a, k in calls
        ]
    except _NotBulkable as exc:
        raise BulkPublishUnsupported(f"bulk publish cannot send {name!r} to {exc}") from exc


def _send_message(
    settings: _Settings,
    channel: Any,
    collector: _Collector,
    name: str,
    where: _Destination,
    headers: dict[str, Any],
    properties: dict[str, Any],
    body: Any,
) -> None:
    """Route one task message through kombu's channel into ``collector``."""
    signals.before_task_publish.send(
        sender=name,
        body=body,
        exchange="",
        routing_key=where.qname,
        declare=[where.queue],
        headers=headers,
        properties=properties,
        retry_policy=settings.retry_policy,
    )
    content_type, content_encoding, data = _dumps(body, serializer=settings.serializer)
    if settings.compression:
        data, headers["compression"] = _compress(data, settings.compression)
    properties["delivery_mode"] = where.delivery_mode
    message = channel.prepare_message(
        data, where.priority or 0, content_type, content_encoding, headers, properties
    )
    channel.basic_publish(message, "", where.qname, _publish_batch=collector)


def _send_events(
    settings: _Settings,
    channel: Any,
    collector: _Collector,
    exchange: Any,
    hostname: str,
    events: list[dict[str, Any]],
) -> None:
    """Route one ``task.multi`` message with ``events`` through kombu's channel."""
    _maybe_declare(exchange, channel)
    content_type, content_encoding, data = _dumps(events, serializer=settings.event_serializer)
    message = channel.prepare_message(
        data, 0, content_type, content_encoding, {"hostname": hostname}, {"delivery_mode": 1}
    )
    channel.basic_publish(message, exchange.name, "task.multi", _publish_batch=collector)
