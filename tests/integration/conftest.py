"""Fixtures for integration tests: a real Redis, the stub API, real worker subprocesses.

Without Redis these tests are skipped locally but fail in CI (``CI=true``), as dramatiq does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis
from celery import Celery

from devstack import WorkerProcess
from stubapi import StubServer
from tests.integration.harness import TEST_REDIS_URL, worker_env
from worker import app as celery_app
from worker.celery_ext.config import apply_config, with_redis_url
from worker.settings import Settings


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {TEST_REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def clean_redis(redis_client: redis.Redis) -> redis.Redis:
    redis_client.flushdb()
    return redis_client


@pytest.fixture(scope="session")
def app(redis_client: redis.Redis) -> Iterator[Celery]:
    """The project's Celery app, pointed at the test Redis database as ``--redis-url`` does."""
    apply_config(celery_app, with_redis_url(Settings.from_env(), TEST_REDIS_URL))
    # Celery keeps a result backend and a broker pool once built. Under pytest-xdist a unit
    # test run earlier in this process may have built them for the default URL: drop them,
    # so that the integration tests publish and read where their workers are.
    celery_app._backend_cache = None
    celery_app._local = threading.local()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    yield celery_app


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(host="127.0.0.1", port=0, latency_ms=20, dimensions=16) as server:
        yield server


@pytest.fixture
def start_worker(
    app: Celery, clean_redis: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses against a stub; each is stopped (warm) at teardown."""
    started: list[WorkerProcess] = []

    def start(
        base_url: str, extra_env: Mapping[str, str] | None = None, name: str = "itest"
    ) -> WorkerProcess:
        log_path = tmp_path / f"{name}-{len(started)}.log"
        worker = WorkerProcess(worker_env(base_url, extra_env), log_path, name)
        started.append(worker)
        worker.wait_ready(app)
        return worker

    yield start
    for worker in started:
        worker.stop()
