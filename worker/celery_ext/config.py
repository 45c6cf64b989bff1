"""The Celery configuration, built from ``Settings`` by one function.

``celery_config(settings)`` is the whole configuration: ``celeryconfig.py`` is that dict for
``Settings.from_env()``, and ``embed-file --redis-url`` applies it again (``apply_config``)
for settings with another URL (``with_redis_url``), so TLS, the result backend and the
transport always follow the URL they are for. Every key is set, even to Celery's default
(``None``), so applying the config for another URL leaves nothing of the previous one behind.
The broker transport is not selected here: ``install`` makes the project's transport kombu's
``redis``/``rediss``, so the broker URL keeps its scheme.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.entity import Exchange, Queue

from worker.celery_ext.sentinel import SENTINEL_TRANSPORT_PATH, register_transport_alias
from worker.celery_ext.serialization import SERIALIZER_NAME
from worker.errors import EmbeddingConfigError
from worker.names import BULK_QUEUE, EMBED_TEXT_TASK, INTERACTIVE_QUEUE, TASK_QUEUE
from worker.redis_client import CELERY_REDIS_SCHEMES, SENTINEL_SCHEME
from worker.settings import Settings
from worker.waiting import floor_every

__all__ = [
    "CELERY_URL_VARIABLES",
    "RESULT_BACKEND_CLASS",
    "SENTINEL_RESULT_BACKEND_CLASS",
    "SENTINEL_TRANSPORT_CLASS",
    "TASK_REQUEST_CLASS",
    "WORKER_CONSUMER_CLASS",
    "apply_config",
    "broker_url",
    "celery_config",
    "refuse_celery_url_variables",
    "result_backend_url",
    "uses_sentinel",
    "with_redis_url",
]

# The adaptations that Celery selects through its settings (see worker/celery_ext/__init__).
RESULT_BACKEND_CLASS = "worker.celery_ext.result_backend:ResultBackend"
SENTINEL_TRANSPORT_CLASS = SENTINEL_TRANSPORT_PATH
SENTINEL_RESULT_BACKEND_CLASS = "worker.celery_ext.sentinel:SentinelResultBackend"
WORKER_CONSUMER_CLASS = "worker.celery_ext.consumer:EventBatchingConsumer"
TASK_REQUEST_CLASS = "worker.celery_ext.outages:RequeueOnOutageRequest"

# Certificates are checked: kombu's and Celery's own TLS defaults would not check them.
_VERIFIED_TLS = {"ssl_cert_reqs": ssl.CERT_REQUIRED}


# Celery's configuration object answers the broker and result URLs from these variables
# whenever they are set, over the configuration (celery.app.utils.Settings): the result
# backend would lose the project's class prefix and ``embed-file --redis-url`` would publish
# elsewhere. The project reads its own names (EMBEDDINGS_BROKER_URL,
# EMBEDDINGS_RESULT_BACKEND_URL) and refuses these rather than fight Celery over them.
CELERY_URL_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)


def refuse_celery_url_variables(environ: Mapping[str, str] | None = None) -> None:
    """Raise ``EmbeddingConfigError`` naming any of ``CELERY_URL_VARIABLES`` that is set."""
    environ = os.environ if environ is None else environ
    found = [name for name in CELERY_URL_VARIABLES if environ.get(name)]
    if found:
        raise EmbeddingConfigError(
            f"{', '.join(found)} is set, and Celery would read it over the project's "
            "configuration (its stock result backend, or another broker): use REDIS_URL, "
            "EMBEDDINGS_BROKER_URL or EMBEDDINGS_RESULT_BACKEND_URL instead, and no "
            "celery --broker/--result-backend option"
        )


def broker_url(settings: Settings) -> str:
    """``EMBEDDINGS_BROKER_URL``, or else ``REDIS_URL``."""
    return settings.broker_url or settings.redis_url


def result_backend_url(settings: Settings) -> str:
    """``EMBEDDINGS_RESULT_BACKEND_URL``, or else ``REDIS_URL`` (without the class prefix)."""
    return settings.result_backend_url or settings.redis_url


def with_redis_url(settings: Settings, redis_url: str) -> Settings:
    """``settings`` with broker and results both at ``redis_url``, as if it were ``REDIS_URL``
    alone (``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` no longer apply)."""
    return dataclasses.replace(settings, redis_url=redis_url, broker_url="", result_backend_url="")


def _scheme(url: str) -> str:
    return urlsplit(url).scheme


def _connection(settings: Settings) -> dict[str, Any]:
    broker, results = broker_url(settings), result_backend_url(settings)
    backend = results
    if _scheme(results) in CELERY_REDIS_SCHEMES:
        # Celery's Redis backend with one-step writes, and a Redis outage requeues the text
        # instead of storing it as the text's failure.
        backend = f"{RESULT_BACKEND_CLASS}+{results}"
    elif _scheme(results) == SENTINEL_SCHEME:
        # sentinel://h1:26379;sentinel://h2:26379 (kombu's and Celery's form): the master is
        # found through the Sentinels, under REDIS_SENTINEL_MASTER.
        backend = f"{SENTINEL_RESULT_BACKEND_CLASS}+{results}"
    # redis:// and rediss:// keep their scheme (Flower and `celery inspect` read it):
    # install() maps kombu's redis and rediss aliases to the atomic fetch. None clears a
    # transport an older config selected.
    transport = SENTINEL_TRANSPORT_CLASS if _scheme(broker) == SENTINEL_SCHEME else None
    return {
        "broker_url": broker,
        "result_backend": backend,
        "broker_transport": transport,
        # Verified TLS for rediss://: kombu takes its TLS settings only from broker_use_ssl,
        # and Celery's backend refuses a rediss:// URL without ssl_cert_reqs.
        "broker_use_ssl": dict(_VERIFIED_TLS) if _scheme(broker) == "rediss" else None,
        "redis_backend_use_ssl": dict(_VERIFIED_TLS) if _scheme(results) == "rediss" else None,
    }


def uses_sentinel(settings: Settings) -> bool:
    """Whether the broker or the result backend is reached through Redis Sentinel."""
    urls = (broker_url(settings), result_backend_url(settings))
    return any(_scheme(url) == SENTINEL_SCHEME for url in urls)


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    if not uses_sentinel(settings):
        return {}
    # Questions to a Sentinel are bounded like those to Redis; a dead Sentinel is skipped.
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": 2,
    }
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    return {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": sentinel_kwargs}


def _transport_options(settings: Settings) -> dict[str, Any]:
    # A killed worker's unacked texts return after the visibility timeout; the sweep runs
    # every interval × throttle seconds, so that stays a small fraction of the timeout.
    return {
        **_sentinel_options(settings),
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
        # The sweep's lock. Every worker sweeps each interval, so now and then a SIGKILL lands
        # inside a sweep and leaves the lock behind until it expires: kombu's 300 s would hold
        # every other worker's sweep off for five minutes. Two sweeps that overlap once it has
        # expired are safe: each text's restore is a WATCH transaction on the unacked hash.
        "unacked_mutex_expire": settings.unacked_restore_interval_s,
        "socket_connect_timeout": 5,
        # Bounded, and not retried by redis-py on top of kombu's and Celery's own retries: a
        # hung Redis (stopped, blackholed) otherwise holds a producer's enqueue for minutes.
        "socket_timeout": settings.redis_socket_timeout_s,
        "retry_on_timeout": False,
        "health_check_interval": 10,
    }


def _results(settings: Settings) -> dict[str, Any]:
    return {
        # JSON, with vectors packed as base64 float32 (worker.celery_ext.serialization).
        "result_serializer": SERIALIZER_NAME,
        "result_accept_content": ["json", SERIALIZER_NAME],
        "result_expires": settings.result_expires_s,
        # Arguments are not copied into results: Flower has them from events.
        "result_extended": False,
        "result_backend_transport_options": {
            **_transport_options(settings),
            # Celery's default, 20 retries a second apart, holds a producer's enqueue 20 s
            # while Redis is down (its result subscription retries before the send). A worker
            # whose result write gives up while Redis is down cannot ack either: the text
            # returns after the visibility timeout.
            "retry_policy": {
                "max_retries": settings.result_backend_max_retries,
                "interval_start": 0,
                "interval_step": 1,
                "interval_max": 1,
            },
        },
        # Result reads and writes retry a Redis blip (Celery leaves them unretried by default,
        # and its tracer would then store the text as FAILURE): 0.1 s growing to at most 2 s
        # apart, with full jitter. Past that, worker.celery_ext.outages requeues the text.
        "result_backend_always_retry": True,
        "result_backend_max_retries": settings.result_backend_max_retries,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 2000,
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": settings.redis_socket_timeout_s,
        "redis_backend_health_check_interval": 10,
    }


def _worker(settings: Settings) -> dict[str, Any]:
    # Enough threads for pool_size calls in flight plus two batches forming: at a prefetch of
    # 1 (lanes) a worker holds no texts beyond its threads, and the second batch keeps calls
    # full while the next texts are fetched on a busy machine.
    concurrency = settings.worker_concurrency or (
        settings.pool_size * settings.batch_size + 2 * settings.batch_size
    )
    return {
        "worker_pool": settings.worker_pool,
        "worker_concurrency": concurrency,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        # The threads pool cannot cancel a running thread, so Celery's cancel-on-connection-
        # loss only logs a traceback per text. Texts in flight finish; their acks on the dead
        # connection are dropped (worker.celery_ext.transport) and the sweep redelivers them.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        # Task events go out in batches, at most every 0.1 s under load.
        "worker_consumer": WORKER_CONSUMER_CLASS,
        # Events for Flower, enabled here rather than with a worker flag.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
    }


def _lane_queue(name: str) -> Any:
    # Each its own direct exchange and routing key, as Celery's lone default queue had: a bare
    # Queue(name) would take the default queue's exchange and key, and a text sent to one
    # lane would be routed to both.
    queue: Any = Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]
    return queue


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting of the project, for ``settings``."""
    return {
        **_connection(settings),
        "broker_transport_options": {
            **_transport_options(settings),
            # Every poll tries the interactive lane's queue first (worker.celery_ext.transport),
            # but for bulk's floor share of the intake: the same share the budget keeps.
            "queues_first": [INTERACTIVE_QUEUE],
            "others_first_every": floor_every(settings.bulk_floor_share) + 1,
        },
        # JSON only: a pickled message is refused before it is decoded.
        "task_serializer": "json",
        "accept_content": ["json"],
        # Both lanes' queues, consumed by every worker (``-Q`` narrows it); a text sent by
        # name without a queue is a single text: the interactive lane.
        "task_queues": [_lane_queue(name) for name in (INTERACTIVE_QUEUE, BULK_QUEUE)],
        "task_default_queue": TASK_QUEUE,
        # At-least-once delivery: ack after the task ran, re-deliver when a worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # No STARTED write: Flower learns of starts from events, and it saves a write.
        "task_track_started": False,
        # A text whose result Redis could not take goes back to the queue.
        "task_annotations": {EMBED_TEXT_TASK: {"Request": TASK_REQUEST_CLASS}},
        **_results(settings),
        **_worker(settings),
    }


def apply_config(app: Celery, settings: Settings) -> None:
    """Configure ``app`` for ``settings``, replacing every setting ``celery_config`` sets.

    Call it before the app first connects: Celery keeps its connection pools and result
    backend once they are built. Raises ``EmbeddingConfigError`` when a variable of
    ``CELERY_URL_VARIABLES`` would override the configuration. kombu's failover to the next
    ``sentinel://`` URL keeps the project's transport.
    """
    refuse_celery_url_variables()
    register_transport_alias()
    app.conf.update(celery_config(settings))
