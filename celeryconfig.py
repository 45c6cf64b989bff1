"""Celery configuration, driven by the environment, so ``celery -A worker worker`` is right as is.

Broker and results live in Redis (``REDIS_URL``; ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` override either side). Messages are JSON only.
"""

# Imported names start with "_": every public name of this module is shown as a setting
# (Flower's worker Config view lists them all).
import ssl as _ssl
from urllib.parse import urlsplit as _urlsplit

import worker.tasklog as _tasklog  # noqa: F401  (keeps per-task INFO lines out of worker logs)
from worker.serialization import SERIALIZER_NAME as _RESULT_SERIALIZER
from worker.settings import DEFAULT_REDIS_URL as _DEFAULT_REDIS_URL
from worker.settings import Settings as _Settings
from worker.settings import env_int as _env_int
from worker.settings import env_str as _env_str
from worker.vector_cache import check_cache_placement as _check_cache_placement

_settings = _Settings.from_env()
_redis_url = _env_str("REDIS_URL", _DEFAULT_REDIS_URL)

broker_url = _env_str("CELERY_BROKER_URL", _redis_url)
result_backend = _env_str("CELERY_RESULT_BACKEND", _redis_url)
# A vector cache in the broker's (noeviction) database is refused here, at start-up.
_check_cache_placement(_settings, broker_url)
if _urlsplit(result_backend).scheme in ("redis", "rediss"):
    # Celery's Redis backend, except that a Redis outage is never stored as a text's failure:
    # the text goes back to the queue instead (see worker/outages.py). It also stores a
    # result in one round trip instead of two (see worker/result_backend.py).
    result_backend = "worker.result_backend:ResultBackend+" + result_backend
# Stock kombu loses the message a worker was receiving when SIGKILL lands between its BRPOP
# and its unacked write; this transport fetches both in one step (see worker/transport.py).
_broker_scheme = _urlsplit(broker_url).scheme
if _broker_scheme in ("redis", "rediss"):
    # That transport plus one client object per channel, not one per command (see the module).
    broker_transport = "worker.redis_transport:Transport"
if _broker_scheme == "rediss":
    # kombu enables TLS for ``rediss`` by the transport's name, no longer "rediss" here; and
    # its own default would not check the server's certificate.
    broker_use_ssl = {"ssl_cert_reqs": _ssl.CERT_REQUIRED}

# JSON only: a pickled message is refused before it is decoded.
task_serializer = "json"
accept_content = ["json"]
# Results are JSON too, with vectors packed as base64 float32 (see worker.serialization).
result_serializer = _RESULT_SERIALIZER
result_accept_content = ["json", _RESULT_SERIALIZER]

task_default_queue = "embeddings"

# At-least-once delivery: ack after the task ran, and re-deliver when a worker dies mid-task.
task_acks_late = True
task_reject_on_worker_lost = True
# No STARTED write to the backend: Flower learns of starts from events, and it saves a write.
task_track_started = False

# One process holds many waiting texts, so the micro-batcher can fill calls: threads, and
# enough of them for pool_size calls in flight plus one batch forming.
worker_pool = _env_str("CELERY_WORKER_POOL", "threads")
worker_concurrency = _env_int(
    "CELERY_WORKER_CONCURRENCY",
    _settings.pool_size * _settings.batch_size + _settings.batch_size,
)
worker_prefetch_multiplier = _env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 8)
# The threads pool cannot cancel a running thread, so Celery's cancel-on-connection-loss only
# logs a traceback per text. Texts in flight finish; their acks on the dead connection are
# dropped (worker/transport.py) and the unacked-restore sweep redelivers them.
worker_cancel_long_running_tasks_on_connection_loss = False
broker_connection_retry_on_startup = True

# Task events go out in batches at most every 0.1 s under load (see worker/consumer.py).
worker_consumer = "worker.consumer:Consumer"
# Events for Flower, enabled here rather than with a worker flag.
worker_send_task_events = True
task_send_sent_event = True

result_expires = _settings.result_expires_s
# Arguments are not copied into results: Flower has them from events, and results stay small.
result_extended = False

# A killed worker's unacked texts return after the visibility timeout; the sweep runs every
# interval * throttle seconds, so keep that a small fraction of the timeout.
_transport_options = {
    "visibility_timeout": _settings.visibility_timeout_s,
    "unacked_restore_interval": _env_int("BROKER_UNACKED_RESTORE_INTERVAL", 5),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 5,
    # Bounded, and not retried by redis-py on top of kombu's and Celery's own retries: a hung
    # Redis (stopped, blackholed) otherwise holds a producer's enqueue for minutes.
    "socket_timeout": _settings.redis_socket_timeout_s,
    "retry_on_timeout": False,
    "health_check_interval": 10,
}
broker_transport_options = dict(_transport_options)
result_backend_transport_options = {
    **_transport_options,
    # Celery's default, 20 retries a second apart, holds a producer's enqueue 20 s when Redis
    # is down (its result subscription retries before the send). A worker whose result write
    # gives up while Redis is down cannot ack either: the text returns after the visibility
    # timeout.
    "retry_policy": {
        "max_retries": _settings.result_backend_max_retries,
        "interval_start": 0,
        "interval_step": 1,
        "interval_max": 1,
    },
}
# Result reads and writes retry a Redis blip (Celery leaves them unretried by default, and
# its tracer would then store the text as FAILURE): up to that many times, 0.1 s growing to
# at most 2 s apart, with full jitter. Past that, worker/outages.py requeues the text.
result_backend_always_retry = True
result_backend_max_retries = _settings.result_backend_max_retries
result_backend_base_sleep_between_retries_ms = 100
result_backend_max_sleep_between_retries_ms = 2000
redis_socket_connect_timeout = 5
redis_socket_timeout = _settings.redis_socket_timeout_s
redis_backend_health_check_interval = 10
