"""``embed_texts`` / ``aembed_texts``: the deadline counts from the call, a timeout names the
texts, and a list longer than ``EMBEDDINGS_MAX_TEXTS_PER_CALL`` is refused (issue 27, item 5).

No worker runs: every text stays queued, which is what a timed-out call leaves behind.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

import producers
from producers import client
from producers.aio import AsyncProducer
from worker.errors import EmbeddingInputError, EmbeddingResultTimeoutError
from worker.names import queue_for_lane
from worker.settings import DEFAULT_MAX_TEXTS_PER_CALL

pytestmark = pytest.mark.integration

BIG = 2_000  # under the default cap of 2,048


def _queued_ids(redis_client: redis.Redis) -> list[str]:
    messages = redis_client.lrange(queue_for_lane("interactive"), 0, -1)
    return [json.loads(m)["headers"]["id"] for m in messages]


def test_a_timed_out_embed_texts_of_a_big_list_counts_enqueueing_and_names_every_text(
    app: Celery, clean_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
):
    # A clock on which enqueueing takes longer than the whole timeout: the call must then
    # not wait at all. Before, the timeout started after enqueueing (17.6 s for a 1 s
    # timeout of 100,000 texts), so this call waited the whole hour.
    now = [1000.0]
    monkeypatch.setattr(client, "_clock", lambda: now[0])
    real_enqueue_ids = client.enqueue_ids

    def slow_enqueue_ids(*args: Any, **kwargs: Any) -> list[str]:
        ids = real_enqueue_ids(*args, **kwargs)
        now[0] += 3601.0
        return ids

    monkeypatch.setattr(client, "enqueue_ids", slow_enqueue_ids)
    texts = [f"a big list {i}" for i in range(BIG)]
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["vectors"] = producers.embed_texts(texts, timeout=3600, app=app)
        except BaseException as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(60)
    assert not caller.is_alive(), "the deadline did not count the enqueueing"
    error = outcome.get("error")
    assert isinstance(error, EmbeddingResultTimeoutError), repr(outcome)
    assert isinstance(error, CeleryTimeoutError) and isinstance(error, TimeoutError)
    assert error.task_ids == _queued_ids(clean_redis)[::-1]  # LPUSH: the newest first
    assert len(error.task_ids) == BIG
    # What the error promises: the ids stop the texts (or read them later).
    producers.revoke(error.task_ids[:10], app=app)
    states = {app.AsyncResult(task_id).state for task_id in error.task_ids[:10]}
    assert states == {"REVOKED"}


def test_a_timed_out_embed_text_raises_the_typed_timeout_naming_its_text(
    app: Celery, clean_redis: redis.Redis
):
    # Before, embed_text was enqueue_text(...).get(): Celery's bare TimeoutError, no id.
    with pytest.raises(EmbeddingResultTimeoutError) as info:
        producers.embed_text("nobody embeds me", timeout=0.2, app=app)
    assert isinstance(info.value, CeleryTimeoutError)
    assert info.value.task_ids == _queued_ids(clean_redis)
    assert len(info.value.task_ids) == 1


def test_a_timed_out_aembed_texts_names_every_text(app: Celery, clean_redis: redis.Redis):
    texts = [f"an async list {i}" for i in range(300)]

    async def call() -> EmbeddingResultTimeoutError:
        producer = AsyncProducer(app)
        try:
            with pytest.raises(EmbeddingResultTimeoutError) as info:
                await producer.embed_texts(texts, timeout=0.5)
            return info.value
        finally:
            await producer.aclose()

    error = asyncio.run(call())
    assert error.task_ids == _queued_ids(clean_redis)[::-1]
    assert len(error.task_ids) == len(texts)


def test_a_list_over_the_cap_is_refused_before_anything_is_enqueued(
    app: Celery, clean_redis: redis.Redis
):
    texts = [f"too many {i}" for i in range(DEFAULT_MAX_TEXTS_PER_CALL + 1)]
    with pytest.raises(EmbeddingInputError, match=r"at most 2,048 texts.*embed-file"):
        producers.embed_texts(texts, timeout=5, app=app)

    async def call() -> None:
        producer = AsyncProducer(app)
        try:
            await producer.embed_texts(texts, timeout=5)
        finally:
            await producer.aclose()

    with pytest.raises(EmbeddingInputError, match="aembed_texts takes at most 2,048"):
        asyncio.run(call())
    assert clean_redis.llen(queue_for_lane("interactive")) == 0
    # enqueue_texts is the backfill path: no cap.
    assert len(producers.enqueue_texts(texts, app=app)) == len(texts)
