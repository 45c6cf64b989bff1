"""The async producers' publishing side: checks first, Celery's own message, typed failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish
from kombu.exceptions import OperationalError

import producers.aio as aio
import producers.client as client
from devstack import free_port
from producers import AsyncProducer
from producers.client import EMBED_TEXT_TASK, publish_retry_policy
from producers.lanes import lane_route
from worker.errors import (
    EmbeddingConfigError,
    EmbeddingInputError,
    EmbeddingInputTypeError,
    EmbeddingPartialEnqueueError,
    EmbeddingQueueUnavailableError,
)
from worker.names import queue_for_lane
from worker.redaction import task_reprs


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every (task_id, text) the producers hand to the publishing threads."""
    sent: list[tuple[str, str]] = []

    def record(app: Celery, messages: list[tuple[str, str]], model: str | None, lane: str) -> None:
        sent.extend(messages)

    monkeypatch.setattr(aio, "_publish", record)
    monkeypatch.setattr(aio, "_publish_chunk", record)  # a Redis broker's bulk path
    return sent


def _run(coro: Any) -> Any:
    async def main() -> Any:
        producer = AsyncProducer(max_text_chars=100)
        try:
            return await coro(producer)
        finally:
            await producer.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("bad", ["", "  \n", None, 7, "nul\x00byte", "x" * 101])
def test_bad_text_raises_before_anything_is_published(published, bad) -> None:
    async def scenario(producer: AsyncProducer) -> None:
        with pytest.raises(EmbeddingInputError):
            await producer.enqueue_text(bad)
        with pytest.raises(EmbeddingInputError):
            await producer.enqueue_texts(["fine", bad])
        with pytest.raises(EmbeddingInputError):
            await producer.embed_texts(["fine", bad], timeout=1)

    _run(scenario)
    assert published == []


def test_a_bare_string_is_refused_where_a_list_is_expected(published) -> None:
    async def scenario(producer: AsyncProducer) -> None:
        with pytest.raises(EmbeddingInputTypeError, match="not a single str"):
            await producer.enqueue_texts("one text")  # type: ignore[arg-type]

    _run(scenario)
    assert published == []


def test_texts_are_published_in_order_each_with_its_own_task_id(published) -> None:
    texts = [f"text {i}" for i in range(150)]  # three publishing jobs of at most 64

    async def scenario(producer: AsyncProducer) -> list[str]:
        pending = await producer.enqueue_texts(texts)
        return [p.id for p in pending]

    ids = _run(scenario)
    assert sorted(published, key=lambda m: ids.index(m[0])) == list(zip(ids, texts, strict=True))
    assert len(set(ids)) == len(texts)


def test_an_empty_list_embeds_to_an_empty_list_without_publishing(published) -> None:
    async def scenario(producer: AsyncProducer) -> list[list[float]]:
        return await producer.embed_texts([], timeout=1)

    assert _run(scenario) == []
    assert published == []


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    app = Celery("parity", broker="memory://", backend="cache+memory://")
    app.conf.update(task_default_queue="embeddings", task_send_sent_event=True)
    yield app
    app.close()


def _capture() -> tuple[list[dict[str, Any]], Any]:
    seen: list[dict[str, Any]] = []

    def on_publish(sender: str, body: Any, headers: dict[str, Any], **info: Any) -> None:
        seen.append({"sender": sender, "body": body, "headers": dict(headers), **info})

    return seen, on_publish


@pytest.mark.parametrize("lane", ["interactive", "bulk"])
def test_the_published_message_is_the_one_celery_send_task_builds(memory_app, lane) -> None:
    seen, on_publish = _capture()
    before_task_publish.connect(on_publish, weak=False)
    try:
        argsrepr, kwargsrepr = task_reprs("same text", "m", lane=lane)
        memory_app.send_task(EMBED_TEXT_TASK, args=("same text",), kwargs={"model": "m"},
                             task_id="id-1", argsrepr=argsrepr, kwargsrepr=kwargsrepr,
                             **lane_route(lane))  # fmt: skip
        aio._publish(memory_app, [("id-1", "same text")], "m", lane)
    finally:
        before_task_publish.disconnect(on_publish)
    via_send_task, via_async = seen
    assert via_async["body"] == via_send_task["body"]
    assert via_async["headers"] == via_send_task["headers"]
    for field in ("sender", "exchange", "routing_key", "properties"):
        assert via_async[field] == via_send_task[field], field
    assert via_async["routing_key"] == queue_for_lane(lane)


def test_both_producers_publish_with_their_bounded_retry_policy_whatever_the_app_says(
    memory_app,
) -> None:
    # kombu retries for ever with max_retries None: a producer must fail within seconds.
    memory_app.conf.task_publish_retry_policy = {"max_retries": None, "interval_max": 30}
    seen, on_publish = _capture()
    before_task_publish.connect(on_publish, weak=False)
    try:
        client._send("sync text", "m", memory_app, lane="interactive")
        aio._publish(memory_app, [("id-2", "async text")], "m", "interactive")
    finally:
        before_task_publish.disconnect(on_publish)
    policies = [event["retry_policy"] for event in seen]
    assert policies == [publish_retry_policy()] * 2
    assert publish_retry_policy()["max_retries"] == 2


def test_an_unreachable_broker_raises_queue_unavailable_within_seconds() -> None:
    dead = Celery("dead")
    dead.config_from_object("celeryconfig")
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    dead.conf.update(broker_url=url, result_backend=url)

    async def main() -> None:
        producer = AsyncProducer(dead, max_text_chars=100)
        try:
            with pytest.raises(EmbeddingQueueUnavailableError, match="broker is unreachable"):
                await producer.enqueue_text("nowhere to go")
        finally:
            await producer.aclose()

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 15
    dead.close()


def test_a_result_backend_other_than_redis_is_refused_at_construction(memory_app) -> None:
    with pytest.raises(EmbeddingConfigError, match="Redis"):
        AsyncProducer(memory_app)


def test_the_redis_url_is_read_after_a_backend_class_prefix() -> None:
    app = Celery("prefixed")
    app.conf.update(
        result_backend="worker.celery_ext.result_backend:ResultBackend+redis://127.0.0.1:6/3"
    )
    client = aio.result_redis(app)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6, 3)
    assert kwargs["client_name"] == "embedding-producer"
    asyncio.run(client.aclose())


class ChunkPublisher:
    """Stands in for ``aio._publish_chunk``: records each chunk; fails one on request."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.chunks: list[list[tuple[str, str]]] = []
        self.lanes: list[str] = []

    def __call__(
        self, app: Celery, messages: list[tuple[str, str]], model: str | None, lane: str
    ) -> None:
        self.lanes.append(lane)
        if len(self.chunks) == self.fail_at:
            try:
                raise OperationalError("Error 111 connecting to 127.0.0.1:6379")
            except OperationalError as exc:
                raise aio.queue_error(exc, "enqueue the text") from exc
        self.chunks.append(messages)


def test_a_list_goes_out_in_chunks_of_the_bulk_size_in_order(monkeypatch) -> None:
    chunks = ChunkPublisher()
    monkeypatch.setattr(aio, "_publish_chunk", chunks)
    texts = [f"bulk {i}" for i in range(1201)]

    async def scenario(producer: AsyncProducer) -> list[str]:
        return [p.id for p in await producer.enqueue_texts(texts)]

    monkeypatch.setattr(aio.bulk_publish, "supports_bulk_publish", lambda app: True)
    ids = _run(scenario)
    assert [len(chunk) for chunk in chunks.chunks] == [500, 500, 201]
    assert [m for chunk in chunks.chunks for m in chunk] == list(zip(ids, texts, strict=True))
    assert chunks.lanes == ["interactive"] * 3


def test_a_broker_failure_midway_names_exactly_the_texts_enqueued(monkeypatch) -> None:
    chunks = ChunkPublisher(fail_at=1)
    monkeypatch.setattr(aio, "_publish_chunk", chunks)
    monkeypatch.setattr(aio.bulk_publish, "supports_bulk_publish", lambda app: True)
    texts = [f"partial {i}" for i in range(1200)]

    async def scenario(producer: AsyncProducer) -> EmbeddingPartialEnqueueError:
        with pytest.raises(EmbeddingPartialEnqueueError) as info:
            await producer.enqueue_texts(texts)
        return info.value

    error = _run(scenario)
    assert error.not_enqueued_from == 500
    assert [r.id for r in error.enqueued] == [task_id for task_id, _ in chunks.chunks[0]]
    assert "the first 500 of 1200 texts were enqueued, none from index 500 on" in str(error)
    assert "the broker is unreachable" in str(error)
    assert len(chunks.chunks) == 1  # nothing after the failed chunk was sent
