"""Celery configuration, driven by the environment, so ``celery -A worker worker`` is right as is.

Broker and results live in Redis (``REDIS_URL``; ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` override either side). Messages are JSON only.
"""

from __future__ import annotations

from worker.serialization import SERIALIZER_NAME
from worker.settings import DEFAULT_REDIS_URL, Settings, env_int, env_str

_settings = Settings.from_env()
_redis_url = env_str("REDIS_URL", DEFAULT_REDIS_URL)

broker_url = env_str("CELERY_BROKER_URL", _redis_url)
result_backend = env_str("CELERY_RESULT_BACKEND", _redis_url)

# JSON only: a pickled message is refused before it is decoded.
task_serializer = "json"
accept_content = ["json"]
# Results are JSON too, with vectors packed as base64 float32 (see worker.serialization).
result_serializer = SERIALIZER_NAME
result_accept_content = ["json", SERIALIZER_NAME]

task_default_queue = "embeddings"

# At-least-once delivery: ack after the task ran, and re-deliver when a worker dies mid-task.
task_acks_late = True
task_reject_on_worker_lost = True
# No STARTED write to the backend: Flower learns of starts from events, and it saves a write.
task_track_started = False

# One process holds many waiting texts, so the micro-batcher can fill calls: threads, and
# enough of them for pool_size calls in flight plus one batch forming.
worker_pool = env_str("CELERY_WORKER_POOL", "threads")
worker_concurrency = env_int(
    "CELERY_WORKER_CONCURRENCY",
    _settings.pool_size * _settings.batch_size + _settings.batch_size,
)
worker_prefetch_multiplier = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 8)
worker_cancel_long_running_tasks_on_connection_loss = True
broker_connection_retry_on_startup = True

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
    "unacked_restore_interval": env_int("BROKER_UNACKED_RESTORE_INTERVAL", 5),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
    "retry_on_timeout": True,
    "health_check_interval": 10,
}
broker_transport_options = dict(_transport_options)
result_backend_transport_options = dict(_transport_options)
redis_socket_connect_timeout = 5
redis_socket_timeout = 30
redis_backend_health_check_interval = 10
