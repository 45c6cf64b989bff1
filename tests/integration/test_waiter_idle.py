"""The asyncio result waiter on a real Redis: idle spells, health checks, lost connections.

redis-py's health check reads the connection of whoever sends a command while nothing is
subscribed; the waiter's reader task is always reading it. A short ``health_check_interval``
(the gateway's is 10 s) makes the issue's "fails after it sits idle" happen at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from celery import Celery
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.service import QueueService
from gateway.settings import GatewaySettings
from producers.waiter import AsyncResultWaiter
from tests.integration.faultkit import expected
from tests.integration.harness import TEST_REDIS_URL

pytestmark = pytest.mark.integration
MODEL = "text-embedding-3-small"
GATEWAY_KEY = "gw-idle-test-key"
# Far below the gateway's 10 s, so an idle spell of a few tenths of a second outlasts it.
HEALTH_CHECK_INTERVAL_S = 0.05
IDLE_S = 0.3
T = TypeVar("T")


def _stored(app: Celery, task_id: str, vector: list[float]) -> tuple[str, bytes]:
    backend = app.backend
    key = backend.get_key_for_task(task_id)
    meta = {"status": "SUCCESS", "result": vector, "traceback": None, "children": []}
    meta["task_id"] = task_id
    text_key = key.decode() if isinstance(key, bytes) else key
    return text_key, backend.encode(meta).encode()


def _waiter(app: Celery, client: redis.asyncio.Redis) -> AsyncResultWaiter:
    backend = app.backend

    def key_for(task_id: str) -> str:
        key = backend.get_key_for_task(task_id)
        return key.decode() if isinstance(key, bytes) else key

    # The default poll (5 s): the reader sits in one read through the whole idle spell.
    return AsyncResultWaiter(client, key_for=key_for, decode=backend.decode_result)


def _run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def test_waits_after_idle_spells_longer_than_the_health_check_interval_all_succeed(
    app: Celery, clean_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="producers.waiter")

    async def scenario() -> list[Any]:
        client = redis.asyncio.Redis.from_url(
            TEST_REDIS_URL, health_check_interval=HEALTH_CHECK_INTERVAL_S
        )
        writer = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
        waiter = _waiter(app, client)
        got = []
        try:
            for i in range(4):
                task_id = f"idle-{i}-{uuid.uuid4()}"
                key, value = _stored(app, task_id, [float(i)] * 4)
                await writer.set(key, value, ex=60)
                got.append(await waiter.wait([task_id], timeout_s=5))
                await asyncio.sleep(IDLE_S)  # idle, nothing subscribed but the waiter's own
        finally:
            await waiter.aclose()
            await writer.aclose()
        return got

    assert _run(scenario) == [[[float(i)] * 4] for i in range(4)]
    failures = [r.getMessage() for r in caplog.records if r.name == "producers.waiter"]
    assert failures == []


def test_the_gateway_answers_a_request_that_follows_an_idle_spell(
    app: Celery, start_worker: Any, stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 502 "the embedding task failed (RuntimeError)", in process: the
    # gateway's own app, service and producer, on an event loop that outlives requests.
    start_worker(stub.base_url)
    monkeypatch.setitem(app.conf, "redis_backend_health_check_interval", HEALTH_CHECK_INTERVAL_S)
    settings = GatewaySettings(api_keys=(GATEWAY_KEY,), request_timeout_s=30.0)
    gateway = create_app(settings, lambda: QueueService(app, ping_timeout_s=1.0))
    auth = {"Authorization": f"Bearer {GATEWAY_KEY}"}
    answers = []
    with TestClient(gateway) as client:
        for i in range(3):
            text = f"after idle spell {i}"
            response = client.post(
                "/v1/embeddings", json={"model": MODEL, "input": text}, headers=auth
            )
            answers.append((response.status_code, response.json()))
            time.sleep(IDLE_S)
    assert [status for status, _ in answers] == [200, 200, 200], answers
    vectors = [body["data"][0]["embedding"] for _, body in answers]
    assert vectors == [expected(f"after idle spell {i}") for i in range(3)]


def test_a_killed_subscription_is_made_anew_and_results_stored_meanwhile_are_read(
    app: Celery, clean_redis: redis.Redis
) -> None:
    name = f"waiter-test-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[Any]:
        client = redis.asyncio.Redis.from_url(
            TEST_REDIS_URL, health_check_interval=HEALTH_CHECK_INTERVAL_S, client_name=name
        )
        writer = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
        waiter = _waiter(app, client)
        try:
            before = asyncio.create_task(waiter.wait(["before-kill"], timeout_s=10))
            async with asyncio.timeout(5):
                while (await writer.pubsub_numsub(_stored(app, "before-kill", [])[0]))[0][1] < 1:
                    await asyncio.sleep(0.005)
            # Only this test's connections: other runs share this Redis.
            for entry in await writer.client_list():
                if entry["name"] == name:
                    await writer.client_kill_filter(_id=entry["id"])
            key, value = _stored(app, "before-kill", [1.0] * 4)
            await writer.set(key, value, ex=60)  # stored, never published: only MGET finds it
            key, value = _stored(app, "after-kill", [2.0] * 4)
            await writer.set(key, value, ex=60)
            after = await waiter.wait(["after-kill"], timeout_s=10)
            return [await before, after]
        finally:
            await waiter.aclose()
            await writer.aclose()

    assert _run(scenario) == [[[1.0] * 4], [[2.0] * 4]]
