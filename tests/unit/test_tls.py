"""Every Redis client the project builds from a ``rediss://`` URL checks the server's certificate.

Celery's broker and result backend are covered in test_celery_config.py (they need
``ssl_cert_reqs``, which ``worker.celery_ext.config`` sets); the clients below are redis-py's
own, built with ``from_url``, whose TLS default verifies. Nothing connects.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import redis
from celery import Celery

from producers.aio import redis_for_url
from worker import observability
from worker.budget.shared import SharedBudget
from worker.settings import Settings
from worker.vector_cache import VectorCache

URL = "rediss://:pw@redis.example.com:6380/3"


def _cert_reqs(client: Any) -> Any:
    pool = client.connection_pool
    connection = pool.connection_class(**pool.connection_kwargs)
    context = getattr(connection, "ssl_context", None)  # redis.asyncio keeps it there
    return connection.cert_reqs if context is None else context.cert_reqs


def _builders() -> dict[str, Any]:
    settings = Settings(redis_url="redis://broker:6379/0", cache_url=URL)
    app = Celery("tls-test", set_as_current=False)
    return {
        "shared budget": lambda: SharedBudget.from_url(URL, settings)._client,
        "vector cache": lambda: VectorCache.from_url(URL, settings)._client,
        "queue depth gauge": lambda: observability._broker_client(URL, settings),
        "async producers": lambda: redis_for_url(URL, app),
    }


@pytest.mark.parametrize("name", sorted(_builders()))
def test_a_rediss_url_gets_a_verified_tls_connection(name: str) -> None:
    client = _builders()[name]()
    assert client is not None
    assert "SSL" in client.connection_pool.connection_class.__name__
    assert _cert_reqs(client) == ssl.CERT_REQUIRED


def test_a_plain_redis_url_gets_no_tls() -> None:
    client = observability._broker_client("redis://redis.example.com:6379/0", Settings())
    assert client is not None
    assert client.connection_pool.connection_class is redis.Connection
