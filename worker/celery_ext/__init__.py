"""Where the worker departs from stock Celery and kombu: every adaptation, pinned to 5.7.

The rest of ``worker/`` is the product and imports nothing from here. The Celery
configuration joins them: ``config.celery_config(settings)`` selects the classes below
that Celery and kombu load by name, and ``install(app)`` (called once, by
``worker.celery_app``) installs those that act process-wide (the ``redis``/``rediss``
transport aliases, the serializer, logging). Each keeps Celery's
and kombu's message formats and keys, so stock and patched workers can share a broker.

==================  ======================================  ========================================
module              replaces                                why
==================  ======================================  ========================================
``transport``       kombu's Redis ``Channel``, ``QoS``,     stock ``BRPOP`` loses a message when a
                    ``Transport``, as kombu's ``redis``     worker is killed between the pop and its
                    and ``rediss`` transports               unacked copy; a round trip per message,
                    (``install``): ``BLMOVE`` +             per ack, and a client per command bound
                    ``fetch.lua`` takes up to 16 messages   a worker's intake; an ack on a dead
                    with their unacked copies; acks once    connection stopped the worker
                    per loop turn; one client per pool; a
                    dead connection's ack is dropped
``full_redis``      kombu's Redis ``Channel`` (mixed into   a full Redis (maxmemory) refuses every
                    ``transport``): sizes, checks, deletes  MULTI: a worker starting then stopped,
                    without ``MULTI``; a refused binding    and acks could not free it; a fetch
                    left unrecorded. ``transport`` also     refused for memory is not a lost
                    pauses fetching while Redis is full     connection
``result_backend``  Celery's ``RedisBackend``               one round trip instead of two; a RETRY
                    (``result_backend`` prefix): a write    can no longer overwrite a re-run's
                    is one ``store_result.lua``; a call's   SUCCESS; one write per call, not per
                    vectors go in one pipeline; REVOKED is  text; an outage is not stored as
                    final; the fleet's revoke list          failure; a revoke reaches workers
                                                            started later
``sentinel``        kombu's ``SentinelChannel``,           the same guarantees behind Sentinel: the
                    ``SentinelTransport``, Celery's         stock Sentinel classes are the stock
                    ``SentinelBackend`` (``sentinel://``):  Redis ones, with none of the above
                    the classes above placed before them
``outages``         the task's ``Request``                  Celery turns its own backend's
                    (``task_annotations``): a Redis         ``ConnectionError`` into the text's
                    outage requeues the text                FAILURE
``privacy``         the task's ``Request.info`` (the        ``celery inspect active``/``reserved``
                    outages request's base): answers with   and Flower's worker pages showed every
                    ``argsrepr``, the text's length and     running text
                    hash
``consumer``        the worker ``Consumer``                 Celery publishes about once per event
                    (``worker_consumer``): task events at   on the consumer's loop under load
                    most every 0.1 s, in batches
``serialization``   kombu's serializer registry and         results 4× smaller in Redis;
                    ``celery.app.trace.saferepr``           ``saferepr`` walked every float of
                    (``install``): vectors as base64        every result
                    float32, shown short in logs/events
``tasklog``         Celery's logging set-up (``install``):  two INFO lines per text cost throughput
                    per-task INFO lines only at DEBUG
``bulk_publish``    ``send_task`` per text, for producers:  ~1.3 ms and two round trips per text,
                    500 tasks per ``MULTI``/``EXEC``        and one result subscription per text:
                    (kombu's own ``LPUSH``es through its    one producer thread fed fewer than two
                    publish batch) with their ``task-sent`` workers (behind Sentinel too, where
                    events, on Redis and behind Sentinel    the producers send a chunk a failover
                    (the master's client); results read by  refused again, with the same ids)
                    ``MGET``
``subscriptions``   ``RedisBackend.on_task_call`` per      one ``SUBSCRIBE`` per task (~60 µs)
                    task, for ``bulk_publish``: a chunk's   kept a bulk ``enqueue_texts`` below one
                    result channels in one ``SUBSCRIBE``,   ``LPUSH`` per round trip
                    registered in Celery's result consumer
``display``         kombu's ``Connection`` (``install``):   the banner and Flower showed
                    a URL without a password is shown       ``redis://:**@host`` for a Redis with
                    without the ``**`` mask                 no password
``compat``          — (run at import and by ``install``)    fails at start-up, naming versions, when
                                                            a Celery or kombu internal used here is
                                                            gone
==================  ======================================  ========================================

``config`` builds the whole Celery configuration from ``worker.settings.Settings``; ``lua``
loads the ``.lua`` scripts (package data). Measurements behind each choice are in
docs/benchmark.md and docs/reliability.md.
"""

from __future__ import annotations

from celery import Celery

from worker.celery_ext import compat, display, sentinel, serialization, tasklog, transport
from worker.celery_ext.config import refuse_celery_url_variables

__all__ = ["install"]


def install(app: Celery) -> None:
    """Install the process-wide adaptations for ``app`` (idempotent).

    Makes the atomic-fetch transport kombu's ``redis`` and ``rediss`` transport (and the
    Sentinel one kombu's ``sentinel``), so broker URLs keep their scheme; registers the
    vector serializer with kombu; shortens Celery's rendering of vector results; quiets
    per-task INFO lines when Celery sets up a worker's logging. They act for the whole
    process, so one call covers every app in it. The class-based adaptations come with the
    app's configuration (``config.celery_config``). Raises ``ImportError`` naming versions
    when a Celery or kombu internal the adaptations use is missing, and
    ``EmbeddingConfigError`` when a ``CELERY_*`` URL variable would override the
    configuration (``config.refuse_celery_url_variables``).
    """
    compat.check_once()
    refuse_celery_url_variables()
    transport.register()
    display.install(app)
    sentinel.register_transport_alias()
    serialization.register_serializer()
    serialization.install_short_result_repr()
    tasklog.connect()
