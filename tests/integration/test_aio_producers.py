"""Async producers end to end: real Redis, a real worker subprocess, the stub API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

import producers
from producers import AsyncProducer
from tests.integration.faultkit import expected
from tests.integration.harness import TEST_REDIS_URL
from worker.errors import EmbeddingAPIError, EmbeddingInputError
from worker.names import BULK_QUEUE, INTERACTIVE_QUEUE

pytestmark = pytest.mark.integration
T = TypeVar("T")


def _with_producer(app: Any, scenario: Callable[[AsyncProducer], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        producer = AsyncProducer(app)
        try:
            return await scenario(producer)
        finally:
            await producer.aclose()

    return asyncio.run(main())


async def _until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def _numsub(client: redis.asyncio.Redis, key: str) -> int:
    [(_, count)] = await client.pubsub_numsub(key)
    return int(count)


def test_async_producers_return_every_vector_in_input_order(start_worker, stub, app):
    start_worker(stub.base_url)
    texts = [f"async text {i}" for i in range(40)]

    async def scenario(producer: AsyncProducer) -> list[list[float]]:
        return await producer.embed_texts(texts, timeout=60)

    assert _with_producer(app, scenario) == [expected(text) for text in texts]
    assert stub.stats()["total_inputs"] == 40


def test_the_module_functions_work_under_asyncio_run_and_close_their_connections(
    start_worker, stub, app
):
    # filterwarnings=error: an unclosed Redis connection at loop shutdown fails this test.
    start_worker(stub.base_url)

    async def main() -> tuple[list[float], list[list[float]], list[float]]:
        one = await producers.aembed_text("a single text", app=app, timeout=30)
        many = await producers.aembed_texts(["first", "second"], app=app, timeout=30)
        pending = await producers.aenqueue_text("enqueued first", app=app)
        return one, many, await pending.get(timeout=30)

    one, many, later = asyncio.run(main())
    assert one == expected("a single text")
    assert many == [expected("first"), expected("second")]
    assert later == expected("enqueued first")


def test_a_thousand_waiting_texts_share_one_subscription_connection(start_worker, stub, app):
    texts = [f"shared subscription {i}" for i in range(1000)]

    async def scenario(producer: AsyncProducer) -> list[list[float]]:
        waiting = asyncio.gather(*(producer.embed_text(t, timeout=90) for t in texts))
        # No worker yet: every text waits, so the connection count is seen at its peak.
        await _until(lambda: len(producer.waiter.waiting_keys) == len(texts))
        observer = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
        try:
            clients = await observer.client_list()
        finally:
            await observer.aclose()
        subscribers = [
            c for c in clients if c["name"] == "embedding-producer" and int(c["sub"]) > 0
        ]
        assert len(subscribers) == 1
        await asyncio.to_thread(start_worker, stub.base_url)
        return await waiting

    vectors = _with_producer(app, scenario)
    assert vectors == [expected(text) for text in texts]
    assert max(stub.stats()["inputs_per_call"]) <= 8


def test_a_result_stored_before_anyone_waits_is_still_read(start_worker, stub, app, clean_redis):
    start_worker(stub.base_url)

    async def scenario(producer: AsyncProducer) -> list[float]:
        pending = await producer.enqueue_text("stored before the wait")
        key = f"celery-task-meta-{pending.id}"
        await _until(lambda: clean_redis.exists(key))
        return await pending.get(timeout=10)

    assert _with_producer(app, scenario) == expected("stored before the wait")


def test_a_text_the_api_rejects_re_raises_the_typed_api_error(start_worker, stub, app):
    start_worker(stub.base_url)

    async def scenario(producer: AsyncProducer) -> None:
        with pytest.raises(EmbeddingAPIError) as info:
            await producer.embed_text("this is __REJECT__ by the API", timeout=30)
        assert info.value.status_code == 400
        assert "disallowed" in str(info.value)
        assert producer.waiter.waiting_keys == frozenset()

    _with_producer(app, scenario)


@pytest.mark.parametrize("bad", ["", "   ", 42, None, "x" * 40_000])
def test_bad_input_raises_before_anything_is_enqueued(clean_redis, app, bad):
    async def scenario(producer: AsyncProducer) -> None:
        with pytest.raises(EmbeddingInputError):
            await producer.embed_text(bad, timeout=1)
        with pytest.raises(EmbeddingInputError):
            await producer.enqueue_texts(["fine", bad, "also fine"])

    _with_producer(app, scenario)
    assert clean_redis.llen(INTERACTIVE_QUEUE) == clean_redis.llen(BULK_QUEUE) == 0
    assert clean_redis.keys("celery-task-meta-*") == []


def test_cancelling_a_waiting_coroutine_unsubscribes_and_empties_the_registry(clean_redis, app):
    # No worker: the texts stay queued, and the coroutine waits until it is cancelled.
    async def scenario(producer: AsyncProducer) -> None:
        waiting = asyncio.create_task(producer.embed_texts(["never", "answered"], timeout=60))
        await _until(lambda: len(producer.waiter.waiting_keys) == 2)
        keys = sorted(producer.waiter.waiting_keys)
        observer = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
        try:
            async with asyncio.timeout(10):
                while [await _numsub(observer, k) for k in keys] != [1, 1]:
                    await asyncio.sleep(0.005)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert producer.waiter.waiting_keys == frozenset()
            async with asyncio.timeout(10):
                while [await _numsub(observer, k) for k in keys] != [0, 0]:
                    await asyncio.sleep(0.005)
        finally:
            await observer.aclose()

    _with_producer(app, scenario)
    # Enqueued before the cancel, in the default (interactive) lane; a worker runs them.
    assert clean_redis.llen(INTERACTIVE_QUEUE) == 2


def test_a_list_goes_through_the_bulk_chunk_publish_without_blocking_the_event_loop(
    start_worker, stub, app, clean_redis, monkeypatch
):
    from worker.celery_ext import bulk_publish

    order: list[str] = []
    original = bulk_publish.publish_chunk_ids

    def spy(*args: Any, **kwargs: Any) -> Any:
        order.append("chunk")
        return original(*args, **kwargs)

    monkeypatch.setattr(bulk_publish, "publish_chunk_ids", spy)
    start_worker(stub.base_url)
    texts = [f"async bulk text {i}" for i in range(1100)]

    async def scenario(producer: AsyncProducer) -> list[list[float]]:
        publishing = asyncio.ensure_future(producer.embed_texts(texts, timeout=120))
        while not publishing.done():
            order.append("tick")  # the loop runs while a chunk is published in a thread
            await asyncio.sleep(0.001)
        return await publishing

    assert _with_producer(app, scenario) == [expected(text) for text in texts]
    assert order.count("chunk") == 3  # 500 + 500 + 100, one transaction each
    first, last = order.index("chunk"), len(order) - 1 - order[::-1].index("chunk")
    assert "tick" in order[first:last]


def test_a_redis_failure_midway_names_exactly_the_texts_enqueued(app, clean_redis, monkeypatch):
    from producers.client import ENQUEUE_CHUNK_SIZE
    from tests.integration.test_bulk_enqueue import FailNthTransaction, _raw_messages
    from worker.errors import EmbeddingPartialEnqueueError

    texts = [f"async partial {i}" for i in range(ENQUEUE_CHUNK_SIZE * 2 + 10)]
    original = redis.connection.AbstractConnection.send_packed_command
    fault = FailNthTransaction(2)
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", fault(original))

    async def scenario(producer: AsyncProducer) -> EmbeddingPartialEnqueueError:
        with pytest.raises(EmbeddingPartialEnqueueError) as info:
            await producer.enqueue_texts(texts)
        return info.value

    error = _with_producer(app, scenario)
    monkeypatch.undo()
    assert error.not_enqueued_from == ENQUEUE_CHUNK_SIZE
    assert f"the first {ENQUEUE_CHUNK_SIZE} of {len(texts)} texts were enqueued" in str(error)
    queued = [m["headers"]["id"] for m in _raw_messages(clean_redis)]
    assert queued == [r.id for r in error.enqueued]
