"""Lanes on a real Redis: every producer path queues a text in its lane's own queue.

Placement is checked with no worker running, where the texts wait: which Redis list holds
them, and the routing key a worker will read the lane from. Only the interactive lane is
then run end to end, since a worker built before the worker side of lanes consumes only
Celery's default queue (the interactive one); the bulk lane's messages are deleted unread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery

import producers
from devstack import WorkerProcess
from producers import AsyncProducer
from producers.sliding import QueueStream
from stubapi import StubServer
from tests.integration.faultkit import expected
from worker.names import BULK_QUEUE, INTERACTIVE_QUEUE, LANE_QUEUES, LANES

pytestmark = pytest.mark.integration


def _queued(client: redis.Redis, queue: str) -> dict[str, dict[str, Any]]:
    """The messages waiting in ``queue``, by task id."""
    messages = (json.loads(raw) for raw in client.lrange(queue, 0, -1))
    return {message["headers"]["id"]: message for message in messages}


def _enqueue_async(app: Celery, texts: list[str], lane: str) -> list[str]:
    async def main() -> list[str]:
        producer = AsyncProducer(app)
        try:
            return [pending.id for pending in await producer.enqueue_texts(texts, lane=lane)]
        finally:
            await producer.aclose()

    return asyncio.run(main())


def _enqueue_like_embed_file(app: Celery, texts: list[str], lane: str | None) -> list[str]:
    ids = [f"embed-file-{lane}-{i}" for i in range(len(texts))]
    stream = QueueStream(app) if lane is None else QueueStream(app, lane=lane)
    stream.send(texts, 60, lambda _position, _outcome: None, task_ids=ids)
    stream.close()
    return ids


def test_each_lanes_texts_wait_in_their_own_queue_and_an_interactive_text_is_embedded(
    app: Celery,
    clean_redis: redis.Redis,
    start_worker: Callable[..., WorkerProcess],
    stub: StubServer,
) -> None:
    sent: dict[str, set[str]] = {lane: set() for lane in LANES}
    for lane in LANES:
        texts = [f"{lane} text {i}" for i in range(3)]
        sent[lane].add(producers.enqueue_text(texts[0], app=app, lane=lane).id)  # send_task
        sent[lane].update(r.id for r in producers.enqueue_texts(texts, app=app, lane=lane))
        sent[lane].update(_enqueue_async(app, texts, lane))
        sent[lane].update(_enqueue_like_embed_file(app, texts[:2], lane))
    # embed-file's own default is the bulk lane; every other default is interactive.
    sent["bulk"].update(_enqueue_like_embed_file(app, ["a default backfill text"], None))
    sent["interactive"].add(producers.enqueue_text("a default web text", app=app).id)

    for lane, queue in LANE_QUEUES.items():
        queued = _queued(clean_redis, queue)
        assert set(queued) == sent[lane], lane
        for message in queued.values():
            assert message["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
            assert f"'lane': '{lane}'" in message["headers"]["kwargsrepr"]
    assert (len(sent["interactive"]), len(sent["bulk"])) == (10, 10)
    # Nothing else in Redis looks like a task queue: no text went anywhere else.
    lists = {key.decode() for key in clean_redis.keys("*") if clean_redis.type(key) == b"list"}
    assert lists == {INTERACTIVE_QUEUE, BULK_QUEUE}
    clean_redis.delete(INTERACTIVE_QUEUE, BULK_QUEUE)

    waiting = producers.enqueue_text("end to end, interactive", app=app, lane="interactive")
    assert set(_queued(clean_redis, INTERACTIVE_QUEUE)) == {waiting.id}
    start_worker(stub.base_url)
    assert waiting.get(timeout=30) == expected("end to end, interactive")
    assert clean_redis.llen(INTERACTIVE_QUEUE) == 0
