"""The async producers behind Sentinel: the client they build, their publish and subscribe
retries through a failover, and URLs they refuse. Nothing connects."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from celery import Celery
from redis.exceptions import ConnectionError as RedisConnectionError

import producers.aio as aio
from producers import client
from producers.waiter import AsyncResultWaiter
from worker.errors import (
    EmbeddingConfigError,
    EmbeddingPartialEnqueueError,
    EmbeddingQueueFullError,
    EmbeddingQueueUnavailableError,
    EmbeddingResultStoreUnavailableError,
)
from worker.redis_client import SentinelRedis, sentinel_target
from worker.settings import Settings

PASSWORD = "s3cret-master"
SENTINEL_PASSWORD = "s3cret-sentinel"
SENTINELS = f"sentinel://:{PASSWORD}@10.0.0.1:26379/4;sentinel://10.0.0.2;sentinel://10.0.0.3:26380"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    chosen = Settings(
        redis_sentinel_master="queue-master",
        redis_sentinel_password=SENTINEL_PASSWORD,
        redis_failover_timeout_s=2.0,
    )
    monkeypatch.setattr(client, "_settings", chosen)
    return chosen


def _app(url: str = SENTINELS) -> Celery:
    app = Celery("aio-sentinel", set_as_current=False)
    app.conf.update(
        broker_url=url,
        result_backend=f"worker.celery_ext.sentinel:SentinelResultBackend+{url}",
        redis_socket_connect_timeout=5,
        redis_socket_timeout=7,
        redis_backend_health_check_interval=10,
    )
    return app


def test_a_sentinel_url_gives_a_client_of_the_named_master_with_the_apps_timeouts(
    settings: Settings,
) -> None:
    made = aio.result_redis(_app())
    assert isinstance(made, SentinelRedis)
    pool = made.connection_pool
    assert pool.service_name == "queue-master"
    kwargs = pool.connection_kwargs
    assert kwargs["db"] == 4
    assert kwargs["password"] == PASSWORD
    assert kwargs["socket_connect_timeout"] == 5
    assert kwargs["socket_timeout"] == 7
    assert kwargs["health_check_interval"] == 10
    assert kwargs["client_name"] == "embedding-producer"
    sentinels = pool.sentinel_manager.sentinels
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert addresses == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {
        SENTINEL_PASSWORD
    }
    shown = repr(made) + repr(pool) + repr(pool.sentinel_manager)
    assert PASSWORD not in shown and SENTINEL_PASSWORD not in shown
    asyncio.run(made.aclose())


def test_the_gateways_broker_client_follows_the_sentinels_too(settings: Settings) -> None:
    made = aio.redis_for_url(SENTINELS, _app())
    assert made.connection_pool.service_name == "queue-master"
    asyncio.run(made.aclose())


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"sentinel://:{PASSWORD}@h1:port/0;sentinel://h2", "part 1 of 2 .* no valid port"),
        (f"sentinel://:{PASSWORD}@h1:99999/0", "part 1 of 1 .* no valid port"),
        (f"sentinel://:{PASSWORD}@h1:26379/zero", "database number"),
        (f"sentinel://:{PASSWORD}@h1:26379/0;redis://h2:6379", "part 2 of 2 .* sentinel://"),
    ],
)
def test_an_unreadable_sentinel_url_is_a_config_error_that_never_shows_the_password(
    settings: Settings, url: str, says: str
) -> None:
    with pytest.raises(EmbeddingConfigError, match=says) as raised:
        aio.redis_for_url(url, _app())
    # Nor does anything a traceback would print, chained exceptions included.
    assert PASSWORD not in "".join(traceback.format_exception(raised.value))


def test_an_empty_sentinel_list_is_a_config_error() -> None:
    with pytest.raises(EmbeddingConfigError, match="at least one Sentinel"):
        sentinel_target(" ; ")


class FlakyPublish:
    """Stands in for ``aio._publish``, one text per call: the attempts in ``failing`` fail."""

    def __init__(self, failing: set[int], error: Exception) -> None:
        self.failing = failing
        self.error = error
        self.attempts: list[list[str]] = []
        self.lanes: list[str] = []

    def __call__(
        self, app: Celery, messages: list[tuple[str, str]], model: str | None, lane: str
    ) -> None:
        self.attempts.append([task_id for task_id, _ in messages])
        self.lanes.append(lane)
        if len(self.attempts) in self.failing:
            raise self.error


def _route_needs_send_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk path refuses the route, so each chunk goes one message per text."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise aio.bulk_publish.BulkPublishUnsupported("a route only send_task can follow")

    monkeypatch.setattr(aio, "publish_id_chunks", refuse)


def _master_gone(text: str) -> EmbeddingQueueUnavailableError:
    error = EmbeddingQueueUnavailableError(text)
    error.__cause__ = RedisConnectionError("Connection refused")
    return error


def test_behind_sentinel_a_chunk_sent_per_text_resends_only_the_unsent_texts(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    aio_waits: list[float],
    aio_enqueue: Callable[..., list[str]],
) -> None:
    # "a" goes through; "b" is refused twice while the master is replaced.
    flaky = FlakyPublish({2, 3}, _master_gone("master gone"))
    monkeypatch.setattr(aio, "_publish", flaky)
    _route_needs_send_task(monkeypatch)
    ids = aio_enqueue(_app(), ["a", "b", "c"], lane="bulk")
    assert flaky.attempts == [[ids[0]], [ids[1]], [ids[1]], [ids[1]], [ids[2]]]
    assert flaky.lanes == ["bulk"] * 5  # every attempt, the resent text's too, in its lane
    assert aio_waits == client.failover_waits(2.0)[:2]


def test_behind_sentinel_a_chunk_sent_per_text_gives_up_once_the_failover_timeout_is_spent(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    aio_waits: list[float],
    aio_enqueue: Callable[[Any, list[str]], list[str]],
) -> None:
    flaky = FlakyPublish(set(range(1, 100)), _master_gone("no master"))
    monkeypatch.setattr(aio, "_publish", flaky)
    _route_needs_send_task(monkeypatch)
    with pytest.raises(EmbeddingPartialEnqueueError) as raised:
        aio_enqueue(_app(), ["a"])
    assert raised.value.not_enqueued_from == 0
    assert aio_waits == client.failover_waits(2.0)
    assert len(flaky.attempts) == len(aio_waits) + 1


@pytest.mark.parametrize(
    ("url", "error"),
    [
        (SENTINELS, EmbeddingQueueFullError("full")),  # a full master stays full
        ("redis://127.0.0.1:6/0", _master_gone("down")),
    ],
    ids=["full master", "plain Redis"],
)
def test_a_full_master_or_a_plain_redis_gets_one_attempt(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    aio_waits: list[float],
    aio_enqueue: Callable[[Any, list[str]], list[str]],
    url: str,
    error: Exception,
) -> None:
    flaky = FlakyPublish(set(range(1, 100)), error)
    monkeypatch.setattr(aio, "_publish", flaky)
    _route_needs_send_task(monkeypatch)
    with pytest.raises(EmbeddingQueueUnavailableError):
        aio_enqueue(_app(url), ["a"])
    assert len(flaky.attempts) == 1
    assert aio_waits == []


def test_a_broker_the_bulk_path_does_not_serve_gets_one_message_per_text_and_one_attempt(
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    aio_waits: list[float],
    aio_enqueue: Callable[[Any, list[str]], list[str]],
) -> None:
    flaky = FlakyPublish(set(), _master_gone("unused"))
    monkeypatch.setattr(aio, "_publish", flaky)
    monkeypatch.setattr(aio.bulk_publish, "supports_bulk_publish", lambda app: False)
    ids = aio_enqueue(_app("redis://127.0.0.1:6/0"), ["a", "b"])
    assert flaky.attempts == [ids]
    assert aio_waits == []


class FailingSubscribes(fakeredis.FakeAsyncRedis):
    """A fake Redis whose pub/sub refuses the first ``failures`` SUBSCRIBEs."""

    failures = 0

    def pubsub(self, **kwargs: Any) -> Any:
        pubsub = super().pubsub(**kwargs)
        subscribe = pubsub.subscribe
        owner = self

        async def flaky(*args: Any, **options: Any) -> Any:
            if owner.failures:
                owner.failures -= 1
                raise RedisConnectionError("master gone")
            return await subscribe(*args, **options)

        pubsub.subscribe = flaky
        return pubsub


@pytest.mark.parametrize(("waits", "delivered"), [((0.01, 0.01), True), ((), False)])
def test_a_subscribe_retries_through_its_waits_then_fails_typed(
    waits: tuple[float, ...], delivered: bool
) -> None:
    async def main() -> None:
        server = fakeredis.FakeServer()
        fake = FailingSubscribes(server=server)
        fake.failures = 2
        waiter = AsyncResultWaiter(
            fake,
            key_for=lambda task_id: f"key-{task_id}",
            decode=lambda raw: {"status": "SUCCESS", "result": raw.decode()},
            poll_s=0.05,
            subscribe_waits=waits,
        )
        try:
            await fakeredis.FakeAsyncRedis(server=server).set("key-t1", "vector")
            if delivered:
                assert await waiter.wait(["t1"], timeout_s=5) == ["vector"]
            else:
                with pytest.raises(EmbeddingResultStoreUnavailableError):
                    await waiter.wait(["t1"], timeout_s=5)
        finally:
            await waiter.aclose()

    asyncio.run(main())
