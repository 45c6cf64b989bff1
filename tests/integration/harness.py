"""Shared by integration tests: the test Redis, the test key, a worker environment, a gateway."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from devstack import REPO_ROOT, GatewayProcess
from worker.names import LANE_QUEUES

__all__ = [
    "NO_API_URL",
    "REPO_ROOT",
    "TEST_API_KEY",
    "TEST_REDIS_URL",
    "queued_texts",
    "running_gateway",
    "worker_env",
]


def _test_redis_url() -> str:
    """``TEST_REDIS_URL`` (database 15 of the local Redis by default), one database per worker.

    Under pytest-xdist, worker ``gw<n>`` takes the database ``n`` below it, so its queues,
    results, budget and revoke list never meet another's (kombu scopes fanout channels per
    database too), and ``flushdb`` in one never touches another's texts. The vector cache
    tests take the database 8 below that (tests/integration/test_cache.py), so at most 8
    workers fit, and two runs at once need bases 2 apart per worker (15 and 13 with ``-n 2``).
    """
    parts = urlsplit(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    base = int(parts.path.strip("/") or 0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    database = base - int(worker.removeprefix("gw"))
    if database < 8:
        raise RuntimeError(f"xdist worker {worker} has no test database left below {base}")
    return urlunsplit(parts._replace(path=f"/{database}"))


TEST_REDIS_URL = _test_redis_url()
TEST_API_KEY = "sk-integration-secret-0123456789"
# An API base URL nothing listens on (the discard port): for processes that must never call
# the API themselves, such as the gateway, whose workers do.
NO_API_URL = "http://127.0.0.1:9/v1"


def worker_env(base_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker subprocess pointed at the test Redis and a stub API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env.update(
        {
            "REDIS_URL": TEST_REDIS_URL,
            "EMBEDDINGS_BASE_URL": base_url,
            "EMBEDDINGS_API_KEY": TEST_API_KEY,
            "EMBEDDINGS_DIMENSIONS": "16",
            "EMBEDDINGS_INITIAL_BACKOFF_S": "0.05",
            "EMBEDDINGS_MAX_BACKOFF_S": "0.5",
            "EMBEDDINGS_TIMEOUT_S": "5",
            # Celery retries wait worker.tasks.MIN_RETRY_COUNTDOWN_S (1 s) at the least.
            "EMBEDDINGS_TASK_RETRY_BACKOFF_S": "0.3",
            "EMBEDDINGS_TASK_RETRY_BACKOFF_MAX_S": "1.0",
            # An outage test opens the breaker; 30 s open would only slow the test down.
            "EMBEDDINGS_BREAKER_RESET_TIMEOUT_S": "1.0",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    env.update(extra or {})
    return env


def queued_texts(client: Any) -> int:
    """Messages waiting in the broker, both lanes' queues together."""
    return sum(int(client.llen(queue)) for queue in LANE_QUEUES.values())


@contextmanager
def running_gateway(env: Mapping[str, str], log_path: Path) -> Iterator[GatewayProcess]:
    """``python -m gateway`` with ``env`` (its ``GATEWAY_*`` included), on a free port.

    Ready (``/healthz`` answers 200) on entry, stopped on exit; its log stays at ``log_path``.
    """
    process = GatewayProcess(env, log_path)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
