"""Prometheus metrics served by each worker process, plus the queue depth for autoscalers.

With ``EMBEDDINGS_METRICS_PORT`` set (0, the default, serves nothing), a worker serves
``/metrics`` on ``EMBEDDINGS_METRICS_ADDR:EMBEDDINGS_METRICS_PORT``: the seed's five metrics
(``embeddings_success_total``, ``embeddings_failure_total``, ``embeddings_retry_total``,
``embeddings_latency_ms``, ``embeddings_pool_exhausted_total``), the call latency in
seconds (``embeddings_latency_seconds``), the batch fill, the micro-batcher's waiting texts,
the breaker state, and two gauges read from the broker on each scrape:
``embeddings_queue_depth{queue,lane}`` (messages waiting in each lane's queue,
``embeddings.interactive`` and ``embeddings``; their sum is the backlog an autoscaler scales
on) and ``embeddings_queue_unacked`` (messages reserved by workers, all of them, not yet
acknowledged).

The default ``threads`` pool is one process, so it serves on the port as given. Under
``CELERY_WORKER_POOL=prefork`` every child is its own process with its own metrics, so child
*i* (0-based) serves on ``port + i`` and the parent serves nothing: open that range.
``connect_signals()`` (called by ``worker.tasks``, the module only workers load) hooks this
to the worker's start. The queue keys come from the app's broker transport
(``BrokerKeys.of``): kombu's key formats live in the Celery layer, not here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery
from celery.signals import celeryd_after_setup, worker_process_init
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import metrics  # noqa: F401 - registers the seed's metrics before any scrape
from worker.names import LANE_QUEUES
from worker.redis_client import REDIS_SCHEMES, redis_from_url
from worker.settings import Settings

__all__ = [
    "BrokerKeys",
    "QueueDepthCollector",
    "connect_signals",
    "metrics_port_for",
    "start_metrics_server",
]

log = logging.getLogger(__name__)

# A scrape must stay cheap even when Redis is slow or gone: a short timeout, no retries.
_SCRAPE_TIMEOUT_S = 0.5

_lock = threading.Lock()
_serving: tuple[str, int] | None = None


@dataclass(frozen=True)
class BrokerKeys:
    """Where the broker keeps each lane's messages, and the messages delivered but unacked.

    ``lanes`` maps a lane to its queue and the Redis lists holding that queue (one per
    priority step).
    """

    lanes: Mapping[str, tuple[str, Sequence[str]]]
    unacked: str

    @classmethod
    def of(cls, transport: Any, queues: Mapping[str, str] = LANE_QUEUES) -> BrokerKeys | None:
        """The keys of ``queues`` as ``transport`` (an app's broker transport) names them.

        None when the transport cannot say: only the project's Redis transport
        (``worker.celery_ext.transport``) knows kombu's key formats.
        """
        queue_keys = getattr(transport, "queue_keys", None)
        unacked_key = getattr(transport, "unacked_key", None)
        if not callable(queue_keys) or not callable(unacked_key):
            return None
        lanes = {lane: (queue, tuple(queue_keys(queue))) for lane, queue in queues.items()}
        return cls(lanes, str(unacked_key()))


class QueueDepthCollector(Collector):
    """Reads each lane's broker queue length on each scrape (``LLEN``s, one round trip, bounded).

    ``keys`` names each lane's queue and lists (``BrokerKeys.of``); each lane is reported as
    ``embeddings_queue_depth{queue,lane}``. When Redis does not answer within the timeout,
    the queue gauges are left out of that scrape rather than reported as 0, so an
    autoscaler never scales in on a broker outage.
    """

    def __init__(
        self, client: redis.Redis, keys: BrokerKeys, timeout_s: float = _SCRAPE_TIMEOUT_S
    ) -> None:
        self._client = client
        self._keys = keys
        self._timeout_s = timeout_s

    def describe(self) -> Iterable[Any]:
        # Describing without collecting keeps registration from touching Redis.
        return [
            GaugeMetricFamily("embeddings_queue_depth", "", labels=["queue", "lane"]),
            GaugeMetricFamily("embeddings_queue_unacked", ""),
        ]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pipe = self._client.pipeline(transaction=False)
            for _queue, lists in self._keys.lanes.values():
                for key in lists:
                    pipe.llen(key)
            pipe.hlen(self._keys.unacked)
            *lengths, unacked = pipe.execute()
        except redis.RedisError as exc:
            log.warning("queue depth not collected: %s", type(exc).__name__)
            return
        depth = GaugeMetricFamily(
            "embeddings_queue_depth",
            "Messages waiting in a lane's broker queue, all priorities (the same for every "
            "worker; the backlog is the sum over lanes)",
            labels=["queue", "lane"],
        )
        start = 0
        for lane, (queue, lists) in self._keys.lanes.items():
            waiting = lengths[start : start + len(lists)]
            start += len(lists)
            depth.add_metric([queue, lane], float(sum(waiting)))
        yield depth
        yield GaugeMetricFamily(
            "embeddings_queue_unacked",
            "Messages reserved by any worker and not yet acknowledged",
            value=float(unacked),
        )


def metrics_port_for(base_port: int, pool_index: int | None) -> int:
    """The port a process serves on: the base port, or ``base + index`` for a prefork child."""
    return base_port if pool_index is None else base_port + pool_index


def start_metrics_server(
    settings: Settings, app: Celery, port: int, queues: Mapping[str, str] = LANE_QUEUES
) -> bool:
    """Serve this process's metrics on ``port``; register the queue gauges for ``app``'s broker.

    Returns False, having logged why, when the port is taken: metrics never stop a worker.
    """
    global _serving
    with _lock:
        if _serving is not None:
            return True
        try:
            start_http_server(port, addr=settings.metrics_addr)
        except OSError as exc:
            log.error("metrics not served on %s:%d: %s", settings.metrics_addr, port, exc.strerror)
            return False
        _serving = (settings.metrics_addr, port)
        client = _broker_client(app.conf.broker_url, settings)
        keys = _broker_keys(app, queues) if client is not None else None
        if client is not None and keys is not None:
            REGISTRY.register(QueueDepthCollector(client, keys))
    log.info("Prometheus metrics on http://%s:%d/metrics", settings.metrics_addr, port)
    return True


def _broker_client(broker_url: str | None, settings: Settings) -> redis.Redis | None:
    scheme = urlsplit(broker_url or "").scheme
    if broker_url is None or scheme not in REDIS_SCHEMES:
        log.warning("queue depth gauge needs a Redis broker, got scheme %r", scheme)
        return None
    return redis_from_url(
        broker_url,
        settings,
        socket_timeout=_SCRAPE_TIMEOUT_S,
        socket_connect_timeout=_SCRAPE_TIMEOUT_S,
        retry_on_timeout=False,
    )


def _broker_keys(app: Celery, queues: Mapping[str, str]) -> BrokerKeys | None:
    # Building the connection's transport connects to nothing.
    with app.connection_for_read() as connection:
        keys = BrokerKeys.of(connection.transport, queues)
    if keys is None:
        log.warning("queue depth gauge needs the project's Redis transport")
    return keys


def _is_prefork(pool_cls: Any) -> bool:
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as PreforkPool

    cls = get_implementation(pool_cls)
    return isinstance(cls, type) and issubclass(cls, PreforkPool)


def _on_worker_setup(instance: Any = None, **_: Any) -> None:
    # After logging is set up (unlike worker_init), so the URL or a bind error is logged.
    settings = Settings.from_env()
    if not settings.metrics_port or instance is None:
        return
    if _is_prefork(instance.pool_cls):
        # Each child serves after its fork (see _on_worker_process_init); the parent runs no
        # tasks, so it has nothing to report.
        return
    # Both lanes' queues, whichever this worker consumes: every worker reports the whole
    # backlog, so one scrape target is enough for an autoscaler.
    start_metrics_server(settings, instance.app, settings.metrics_port)


def _on_worker_process_init(**_: Any) -> None:
    from celery import current_app
    from celery.utils.log import current_process_index

    settings = Settings.from_env()
    if not settings.metrics_port:
        return
    port = metrics_port_for(settings.metrics_port, current_process_index(base=0))
    start_metrics_server(settings, current_app, port)


def connect_signals() -> None:
    """Serve metrics from each worker process once Celery has set it up (idempotent)."""
    celeryd_after_setup.connect(_on_worker_setup, weak=False, dispatch_uid=__name__)
    worker_process_init.connect(_on_worker_process_init, weak=False, dispatch_uid=__name__)
