"""A full Redis (maxmemory, noeviction) refuses a list with ``EmbeddingQueueFullError``.

docs/operations.md promises producers ``EmbeddingQueueFullError`` from a full Redis. The list
calls raised ``EmbeddingPartialEnqueueError``, which is not one, even with 0 of 50 texts
enqueued (issue 27, item 2). A list refused partway is both: full, and partial with the
texts that were enqueued. On a private redis-server with a small ``maxmemory``; no worker.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import producers
from producers.aio import AsyncProducer
from tests.integration.faultkit import IGNORE_RESULT_DEL_IN_OUTAGES, RedisServer, app_for
from worker.errors import (
    EmbeddingPartialEnqueueError,
    EmbeddingPartialQueueFullError,
    EmbeddingQueueFullError,
)
from worker.names import queue_for_lane

pytestmark = [
    pytest.mark.integration,
    IGNORE_RESULT_DEL_IN_OUTAGES,
]

FILLER_BYTES = 64 * 1024
MAXMEMORY_BYTES = 4 * 1024 * 1024


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Room for about 1,000 short texts (about 2.2 kB a message in Redis)."""
    args = ["--maxmemory", str(MAXMEMORY_BYTES), "--maxmemory-policy", "noeviction"]
    with RedisServer(tmp_path / "redis", extra_args=args) as server:
        yield server


@pytest.fixture
def full_redis(small_redis: RedisServer) -> RedisServer:
    with small_redis.client() as client:
        for i in range(200):  # 12.8 MB: far past the limit
            try:
                client.set(f"filler:{i}", b"x" * FILLER_BYTES)
            except redis.exceptions.OutOfMemoryError:
                return small_redis
    raise AssertionError("Redis never filled up")


def _aembed(texts: list[str], app: Any) -> Any:
    async def run() -> Any:
        producer = AsyncProducer(app)
        try:
            return await producer.embed_texts(texts, timeout=5)
        finally:
            await producer.aclose()

    return asyncio.run(run())


def _aenqueue(texts: list[str], app: Any) -> Any:
    async def run() -> Any:
        producer = AsyncProducer(app)
        try:
            return await producer.enqueue_texts(texts)
        finally:
            await producer.aclose()

    return asyncio.run(run())


CALLS: dict[str, Callable[[list[str], Any], Any]] = {
    "enqueue_texts": lambda texts, app: producers.enqueue_texts(texts, app=app),
    "embed_texts": lambda texts, app: producers.embed_texts(texts, timeout=5, app=app),
    "aembed_texts": _aembed,
    "aenqueue_texts": _aenqueue,
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_list_sent_to_a_full_redis_raises_the_queue_full_error(
    full_redis: RedisServer, call: str
):
    app = app_for(full_redis.url)
    texts = [f"refused by a full redis {i}" for i in range(50)]
    with pytest.raises(EmbeddingQueueFullError, match="Redis is full") as info:
        CALLS[call](texts, app)
    error = info.value
    assert isinstance(error, EmbeddingPartialEnqueueError)
    assert error.not_enqueued_from == 0 and error.enqueued == []
    with full_redis.client() as client:
        assert client.llen(queue_for_lane("interactive")) == 0


# 3,000 texts: over the cap of the waiting calls (EMBEDDINGS_MAX_TEXTS_PER_CALL), so the
# enqueueing ones, which share their publish paths.
@pytest.mark.parametrize("call", ["enqueue_texts", "aenqueue_texts"])
def test_a_list_that_fills_redis_midway_says_full_and_which_texts_were_enqueued(
    small_redis: RedisServer, call: str
):
    app = app_for(small_redis.url)
    texts = [f"fills redis midway {i} " + "y" * 300 for i in range(3000)]
    with pytest.raises(EmbeddingPartialQueueFullError, match="Redis is full") as info:
        CALLS[call](texts, app)
    error = info.value
    assert isinstance(error, EmbeddingQueueFullError)
    assert 0 < error.not_enqueued_from < len(texts)
    assert len(error.enqueued) == error.not_enqueued_from
    with small_redis.client() as client:
        assert client.llen(queue_for_lane("interactive")) == error.not_enqueued_from
    # The enqueued AsyncResults unsubscribe when collected: let them, then close that socket.
    del error, info
    gc.collect()
    app.backend.result_consumer.stop()
