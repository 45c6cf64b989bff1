"""Bulk enqueue without Redis: chunking, order, validation first, and partial failures.

The Redis side (the messages, the transaction, the events) is in
tests/integration/test_bulk_enqueue.py; here the publisher is replaced by fakes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

import producers
from producers import cli
from producers import client as client_module
from worker.celery_ext import bulk_publish
from worker.errors import (
    EmbeddingInputError,
    EmbeddingPartialEnqueueError,
    EmbeddingQueueUnavailableError,
)

Calls = Sequence[tuple[tuple[Any, ...], dict[str, Any]]]


class FakePublisher:
    """Stands in for ``bulk_publish.publish_chunks``: records the chunks, fails on request."""

    def __init__(self, fail_at_chunk: int | None = None) -> None:
        self.fail_at_chunk = fail_at_chunk
        self.chunks: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = []
        self.sent_ids: list[str] = []
        self.queues: list[str | None] = []  # each chunk's queue

    def __call__(
        self,
        app: Celery,
        name: str,
        calls: Calls,
        *,
        chunk_size: int,
        reprs: Any = None,
        task_ids: Sequence[str],
        queue: str | None = None,
    ) -> Iterator[list[Any]]:
        for number, start in enumerate(range(0, len(calls), chunk_size)):
            if number == self.fail_at_chunk:
                raise OperationalError("Error 111 connecting to 127.0.0.1:6379")
            self.chunks.append(list(calls[start : start + chunk_size]))
            self.queues.append(queue)
            ids = list(task_ids[start : start + chunk_size])
            self.sent_ids.extend(ids)
            yield [app.AsyncResult(task_id) for task_id in ids]


@pytest.fixture
def publisher(monkeypatch: pytest.MonkeyPatch) -> FakePublisher:
    fake = FakePublisher()
    monkeypatch.setattr(bulk_publish, "publish_chunks", fake)
    return fake


def test_enqueue_texts_sends_chunks_of_the_given_size_in_input_order(publisher: FakePublisher):
    texts = [f"text {i}" for i in range(7)]
    results = producers.enqueue_texts(texts, chunk_size=3, model="m")
    assert [len(chunk) for chunk in publisher.chunks] == [3, 3, 1]
    assert [args for chunk in publisher.chunks for args, _ in chunk] == [(t,) for t in texts]
    assert all(kwargs == {"model": "m"} for chunk in publisher.chunks for _, kwargs in chunk)
    assert [r.id for r in results] == publisher.sent_ids
    assert len(set(publisher.sent_ids)) == len(texts)


def test_the_default_chunk_is_the_documented_constant(publisher: FakePublisher):
    producers.enqueue_texts([f"t{i}" for i in range(501)])
    assert client_module.ENQUEUE_CHUNK_SIZE == bulk_publish.DEFAULT_CHUNK_SIZE == 500
    assert [len(chunk) for chunk in publisher.chunks] == [500, 1]


def test_one_bad_text_refuses_the_list_before_anything_is_published(publisher: FakePublisher):
    with pytest.raises(EmbeddingInputError, match="index 2"):
        producers.enqueue_texts(["fine", "also fine", "   ", "never sent"])
    assert publisher.chunks == []


def test_a_broker_failure_midway_names_the_texts_that_were_enqueued(publisher: FakePublisher):
    publisher.fail_at_chunk = 2
    texts = [f"text {i}" for i in range(10)]
    with pytest.raises(EmbeddingPartialEnqueueError) as info:
        producers.enqueue_texts(texts, chunk_size=3)
    error = info.value
    assert isinstance(error, EmbeddingQueueUnavailableError)
    assert error.not_enqueued_from == 6
    assert [r.id for r in error.enqueued] == publisher.sent_ids
    assert len(publisher.sent_ids) == 6
    assert "the first 6 of 10 texts were enqueued, none from index 6 on" in str(error)
    assert "could not enqueue the text: the broker is unreachable" in str(error)
    assert isinstance(error.__cause__, OperationalError)


def test_a_failure_in_the_first_chunk_says_nothing_was_enqueued(publisher: FakePublisher):
    publisher.fail_at_chunk = 0
    with pytest.raises(EmbeddingPartialEnqueueError) as info:
        producers.enqueue_texts(["a", "b"])
    assert (info.value.enqueued, info.value.not_enqueued_from) == ([], 0)


def test_an_error_that_is_not_the_brokers_passes_through_unchanged(
    monkeypatch: pytest.MonkeyPatch,
):
    def broken(*_args: Any, **_kwargs: Any) -> Iterator[list[Any]]:
        raise KeyError("a bug, not an outage")
        yield []  # a generator, as the real one is

    monkeypatch.setattr(bulk_publish, "publish_chunks", broken)
    with pytest.raises(KeyError, match="a bug"):
        producers.enqueue_texts(["a"])


def amqp_app() -> Celery:
    app = Celery("unit-amqp", set_as_current=False)
    app.conf.broker_url = "amqp://guest:guest@127.0.0.1:5672//"
    return app


def test_a_broker_other_than_redis_gets_one_send_task_per_text_in_order(
    monkeypatch: pytest.MonkeyPatch,
):
    app = amqp_app()
    sent: list[str] = []

    def send(
        text: str, model: str | None, target: Celery, task_id: Any = None, *, lane: str
    ) -> Any:
        assert target is app
        sent.append((text, lane))
        return app.AsyncResult(f"id-{text}")

    monkeypatch.setattr(client_module, "_send", send)
    assert not bulk_publish.supports_bulk_publish(app)
    results = producers.enqueue_texts(["a", "b", "c"], app=app)
    assert sent == [("a", "interactive"), ("b", "interactive"), ("c", "interactive")]
    assert [r.id for r in results] == ["id-a", "id-b", "id-c"]
    sent.clear()
    producers.enqueue_texts(["d", "e"], app=app, lane="bulk")
    assert sent == [("d", "bulk"), ("e", "bulk")]  # the per-text fallback keeps the lane


def test_the_per_text_fallback_also_names_what_was_enqueued_when_the_broker_fails(
    monkeypatch: pytest.MonkeyPatch,
):
    app = amqp_app()

    def send(
        text: str, model: str | None, target: Celery, task_id: Any = None, *, lane: str
    ) -> Any:
        if text == "c":
            raise EmbeddingQueueUnavailableError("could not enqueue the text: gone")
        return app.AsyncResult(f"id-{text}")

    monkeypatch.setattr(client_module, "_send", send)
    with pytest.raises(EmbeddingPartialEnqueueError) as info:
        producers.enqueue_texts(["a", "b", "c", "d"], app=app)
    assert info.value.not_enqueued_from == 2
    assert [r.id for r in info.value.enqueued] == ["id-a", "id-b"]


def test_embed_file_reports_its_enqueue_and_collect_rates():
    summary = cli.Summary(texts=10, ok=10, elapsed_s=2.0)
    summary.queue = cli.QueueStats(enqueued=1000, enqueue_s=0.25, collected=1000, collect_s=4.0)
    table = cli._summary_table(summary, cli.Path("out.jsonl"))
    headers = [column.header for column in table.columns]
    assert headers[-2:] == ["enqueued/s", "collected/s"]
    cells = [next(iter(column.cells)) for column in table.columns]
    assert cells[-2:] == ["4000", "250.0"]


def test_embed_file_without_a_queue_shows_no_rates():
    table = cli._summary_table(cli.Summary(texts=1, ok=1, elapsed_s=1.0), cli.Path("o"))
    assert [next(iter(column.cells)) for column in table.columns][-2:] == ["—", "—"]


class RecordingBackend:
    """A result backend that is not Redis: ``send_task`` would call its ``on_task_call``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str]] = []

    def on_task_call(self, producer: Any, task_id: str) -> None:
        self.calls.append((producer, task_id))


def test_a_backend_other_than_redis_hears_on_task_call_per_task_as_send_task_does():
    from worker.celery_ext.subscriptions import subscribe_results

    backend = RecordingBackend()
    assert subscribe_results(backend, "producer", ["a", "b", "c"]) == 3
    assert backend.calls == [("producer", "a"), ("producer", "b"), ("producer", "c")]


class FakePubSub:
    def __init__(self) -> None:
        self.subscribed: list[tuple[str, ...]] = []

    def subscribe(self, *channels: str) -> None:
        self.subscribed.append(channels)


def test_redis_results_are_subscribed_in_one_command_and_never_twice(
    monkeypatch: pytest.MonkeyPatch,
):
    from worker.celery_ext.subscriptions import subscribe_results

    app = Celery("subscriptions-test", backend="redis://127.0.0.1:1/0", set_as_current=False)
    try:
        backend = app.backend
        pubsub = FakePubSub()
        monkeypatch.setattr(backend.client, "pubsub", lambda **_options: pubsub)
        consumer = backend.result_consumer
        key = backend.get_key_for_task
        consumer._pending_unsubscribe.add(key("b"))  # a cancel still queued for "b"
        assert subscribe_results(backend, None, ["a", "b", "c"]) == 1
        assert pubsub.subscribed == [(key("a"), key("b"), key("c"))]
        assert consumer.subscribed_to == {key("a"), key("b"), key("c")}
        assert key("b") not in consumer._pending_unsubscribe  # the new result wins
        assert subscribe_results(backend, None, ["c", "d"]) == 1
        assert pubsub.subscribed[-1] == (key("d"),)  # "c" is already listened to
        assert subscribe_results(backend, None, ["a", "d"]) == 0
        assert len(pubsub.subscribed) == 2
    finally:
        app.close()
