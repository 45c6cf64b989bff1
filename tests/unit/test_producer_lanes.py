"""Producer lanes: every public function puts each text in its lane's queue, and says so.

The broker is kombu's own Redis transport on fakeredis, so the messages checked are the ones
a worker would pop: which list they sit in, the ``delivery_info`` a worker reads the lane
from, the ``kwargsrepr`` Flower shows, and the task-sent events. A fake worker stores a
vector for each published task, so the ``embed_*`` functions return.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery import Celery, states
from celery.app.task import Context
from celery.signals import after_task_publish
from kombu.transport import redis as kombu_redis

import producers
import producers.aio as aio
import producers.sliding as sliding
from producers import cli
from producers import client as client_module
from producers.lanes import check_lane, lane_route
from worker.celery_ext import bulk_publish
from worker.errors import EmbeddingInputError, EmbeddingInputTypeError
from worker.names import (
    BULK_QUEUE,
    EMBED_TEXT_TASK,
    INTERACTIVE_QUEUE,
    TASK_QUEUE,
    lane_of_queue,
)
from worker.settings import Settings

VECTOR = [0.25, 0.5]
# (the lane= keyword passed, the queue the text must land in); None: the default.
LANES = [(None, INTERACTIVE_QUEUE), ("interactive", INTERACTIVE_QUEUE), ("bulk", BULK_QUEUE)]
LANE_IDS = ["default", "interactive", "bulk"]
BAD_LANES = [
    ("unknown", EmbeddingInputError),
    ("Bulk", EmbeddingInputError),
    ("", EmbeddingInputError),
    (None, EmbeddingInputTypeError),
    (1, EmbeddingInputTypeError),
    (["bulk"], EmbeddingInputTypeError),
]


def _lane(lane: str | None) -> dict[str, str]:
    return {} if lane is None else {"lane": lane}


class Broker:
    """The fake Redis every channel of the test apps talks to, read as a worker would."""

    def __init__(self, server: fakeredis.FakeServer) -> None:
        self.server = server
        self.client = fakeredis.FakeRedis(server=server)
        self._events = self.client.pubsub()
        self._events.psubscribe("/*")  # kombu's fanout topics, task events among them

    def messages(self, queue: str) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in reversed(self.client.lrange(queue, 0, -1))]

    def placement(self) -> dict[str, int]:
        return {queue: self.client.llen(queue) for queue in (INTERACTIVE_QUEUE, BULK_QUEUE)}

    def sent_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while (message := self._events.get_message(timeout=0.05)) is not None:
            if message["type"] != "pmessage":
                continue
            envelope = json.loads(message["data"])
            body = base64.b64decode(envelope["body"])
            decoded = json.loads(body)
            events.extend(decoded if isinstance(decoded, list) else [decoded])
        return [event for event in events if event["type"] == "task-sent"]


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    server = fakeredis.FakeServer()

    def fake_client(self: Any, asynchronous: bool = False) -> Any:
        return fakeredis.FakeRedis(server=server)

    monkeypatch.setattr(kombu_redis.Channel, "_create_client", fake_client)
    monkeypatch.setattr(client_module, "_settings", Settings())
    return Broker(server)


def _app(name: str, backend: str) -> Celery:
    # kombu pools connections by URL across apps: a URL of its own keeps this test's channels
    # (and their clients of this test's fake Redis) to itself.
    broker = f"redis://{name}-{uuid.uuid4().hex[:12]}:1/0"
    app = Celery(name, broker=broker, backend=backend, set_as_current=False)
    # The project's default queue and events, as worker.celery_ext.config sets them.
    app.conf.update(task_default_queue=TASK_QUEUE, task_send_sent_event=True)
    return app


@pytest.fixture
def app(broker: Broker) -> Iterator[Celery]:
    """Results in Celery's in-memory cache; a fake worker answers every published task."""
    app = _app("lanes-sync", "cache+memory://")

    def answer(headers: dict[str, Any], **_: Any) -> None:
        app.backend.store_result(headers["id"], VECTOR, states.SUCCESS)

    after_task_publish.connect(answer, weak=False)
    yield app
    after_task_publish.disconnect(answer)
    app.close()


@pytest.fixture
def aio_app(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """Results in the fake Redis, where the async producers' waiter reads them."""
    app = _app("lanes-aio", "redis://127.0.0.1:1/0")
    backend = app.backend
    monkeypatch.setattr(
        aio, "result_redis", lambda _app: fakeredis.FakeAsyncRedis(server=broker.server)
    )

    def answer(headers: dict[str, Any], **_: Any) -> None:
        meta = {"status": states.SUCCESS, "result": VECTOR, "traceback": None, "children": []}
        key = backend.get_key_for_task(headers["id"])
        broker.client.set(key, backend.encode({**meta, "task_id": headers["id"]}))

    after_task_publish.connect(answer, weak=False)
    yield app
    after_task_publish.disconnect(answer)
    app.close()


def _assert_all_in(broker: Broker, queue: str, count: int, lane: str) -> None:
    """``count`` messages, all in ``queue`` (none in the other lane's), showing ``lane``."""
    assert broker.placement() == {
        INTERACTIVE_QUEUE: count if queue == INTERACTIVE_QUEUE else 0,
        BULK_QUEUE: count if queue == BULK_QUEUE else 0,
    }
    for message in broker.messages(queue):
        # What the worker reads the lane from, and what a Celery retry sends it back to.
        assert message["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}
        assert lane_of_queue(message["properties"]["delivery_info"]["routing_key"]) == lane
        assert json.loads(base64.b64decode(message["body"]))[0] != []  # the text travels
        assert message["headers"]["kwargsrepr"] == repr({"lane": lane})  # Flower's column
    events = broker.sent_events()
    assert len(events) == count
    for event in events:
        assert (event["queue"], event["exchange"], event["routing_key"]) == (queue, "", queue)
        assert event["kwargs"] == repr({"lane": lane})


SYNC: dict[str, Callable[..., Any]] = {
    "enqueue_text": lambda app, **kw: producers.enqueue_text("one", app=app, **kw),
    "enqueue_texts": lambda app, **kw: producers.enqueue_texts(["a", "b"], app=app, **kw),
    "embed_text": lambda app, **kw: producers.embed_text("one", app=app, timeout=5, **kw),
    "embed_texts": lambda app, **kw: producers.embed_texts(["a", "b"], app=app, timeout=5, **kw),
    "enqueue_many": lambda app, **kw: client_module.enqueue_many(["a", "b"], app=app, **kw),
    "enqueue_ids": lambda app, **kw: client_module.enqueue_ids(["a", "b"], app=app, **kw),
    "publish_id_chunks": lambda app, **kw: list(
        client_module.publish_id_chunks(["a", "b"], model=None, task_ids=["1", "2"], app=app, **kw)
    ),
}
SENT = {"enqueue_text": 1, "embed_text": 1}  # the others send two texts


@pytest.mark.parametrize("name", SYNC)
@pytest.mark.parametrize(("lane", "queue"), LANES, ids=LANE_IDS)
def test_each_sync_producer_sends_its_texts_to_the_lanes_queue(
    app: Celery, broker: Broker, name: str, lane: str | None, queue: str
) -> None:
    SYNC[name](app, **_lane(lane))
    _assert_all_in(broker, queue, SENT.get(name, 2), lane or "interactive")


def test_the_embed_functions_still_return_the_vectors_in_the_bulk_lane(app: Celery) -> None:
    assert producers.embed_text("one", app=app, timeout=5, lane="bulk") == VECTOR
    assert producers.embed_texts(["a", "b"], app=app, timeout=5, lane="bulk") == [VECTOR] * 2


@pytest.mark.parametrize("name", SYNC)
@pytest.mark.parametrize(("bad", "error"), BAD_LANES)
def test_a_bad_lane_is_refused_naming_the_lanes_before_anything_is_sent(
    app: Celery, broker: Broker, name: str, bad: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"lane must be .*interactive, bulk") as raised:
        SYNC[name](app, lane=bad)
    assert isinstance(raised.value, ValueError | TypeError)  # plain Python code catches it
    assert broker.placement() == {INTERACTIVE_QUEUE: 0, BULK_QUEUE: 0}
    assert broker.sent_events() == []


def test_the_per_text_fallback_sends_each_text_to_the_lanes_queue(
    app: Celery, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A route the bulk path cannot follow: every text goes by send_task instead.
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise bulk_publish.BulkPublishUnsupported("a route only send_task can follow")

    monkeypatch.setattr(bulk_publish, "publish_chunks", refuse)
    monkeypatch.setattr(bulk_publish, "publish_chunk_ids", refuse)
    producers.enqueue_texts(["a", "b"], app=app, lane="bulk")
    client_module.enqueue_ids(["c"], app=app, lane="bulk")
    _assert_all_in(broker, BULK_QUEUE, 3, "bulk")


def test_a_task_route_cannot_move_a_text_out_of_its_lane(app: Celery, broker: Broker) -> None:
    # Say a worker-side config routes the task by exchange and key: the lane still wins.
    app.conf.task_routes = {
        EMBED_TEXT_TASK: {"queue": INTERACTIVE_QUEUE, "exchange": "x", "routing_key": "x"}
    }
    producers.enqueue_text("one", app=app, lane="bulk")
    producers.enqueue_texts(["a", "b"], app=app, lane="bulk")
    _assert_all_in(broker, BULK_QUEUE, 3, "bulk")


def test_a_celery_retry_of_a_delivered_text_goes_back_to_its_lanes_queue(
    app: Celery, broker: Broker
) -> None:
    @app.task(name=EMBED_TEXT_TASK, bind=True)  # type: ignore[untyped-decorator]
    def task(self: Any, text: str, model: str | None = None) -> None:
        """Stands in for the worker's task: only its retry signature is read."""

    producers.enqueue_text("one", app=app, lane="bulk")
    producers.enqueue_texts(["two"], app=app, lane="bulk")
    for message in broker.messages(BULK_QUEUE):
        delivered = Context(
            id=message["headers"]["id"],
            args=["one"],
            kwargs={},
            delivery_info=message["properties"]["delivery_info"],
        )
        # What Task.retry sends: the same queue, by the routing key it was delivered with.
        assert task.signature_from_request(delivered).options["queue"] == BULK_QUEUE


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _producer_call(app: Celery, method: str, **kw: Any) -> Any:
    producer = producers.AsyncProducer(app, max_text_chars=100)
    try:
        if method in ("enqueue_text", "embed_text"):
            return await getattr(producer, method)("one", **kw)
        return await getattr(producer, method)(["a", "b"], **kw)
    finally:
        await producer.aclose()


ASYNC: dict[str, Callable[..., Any]] = {
    "aenqueue_text": lambda app, **kw: producers.aenqueue_text("one", app=app, **kw),
    "aenqueue_texts": lambda app, **kw: producers.aenqueue_texts(["a", "b"], app=app, **kw),
    "aembed_text": lambda app, **kw: producers.aembed_text("one", app=app, timeout=5, **kw),
    "aembed_texts": lambda app, **kw: producers.aembed_texts(["a", "b"], app=app, timeout=5, **kw),
    **{
        f"AsyncProducer.{method}": (
            lambda app, method=method, **kw: _producer_call(app, method, **kw)
        )
        for method in ("enqueue_text", "enqueue_texts", "embed_text", "embed_texts")
    },
}


def _sent_by(name: str) -> int:
    return 1 if name.endswith("_text") else 2


@pytest.mark.parametrize("name", ASYNC)
@pytest.mark.parametrize(("lane", "queue"), LANES, ids=LANE_IDS)
def test_each_async_producer_sends_its_texts_to_the_lanes_queue(
    aio_app: Celery, broker: Broker, name: str, lane: str | None, queue: str
) -> None:
    _run(ASYNC[name](aio_app, **_lane(lane)))
    _assert_all_in(broker, queue, _sent_by(name), lane or "interactive")


@pytest.mark.parametrize("lane", ["interactive", "bulk"])
def test_the_async_per_text_path_sends_each_text_to_the_lanes_queue(
    aio_app: Celery, broker: Broker, monkeypatch: pytest.MonkeyPatch, lane: str
) -> None:
    # A broker the bulk path does not serve: one message per text, built by app.amqp.
    monkeypatch.setattr(aio.bulk_publish, "supports_bulk_publish", lambda app: False)
    assert (
        _run(producers.aembed_texts(["a", "b"], app=aio_app, timeout=5, lane=lane)) == [VECTOR] * 2
    )
    _assert_all_in(broker, INTERACTIVE_QUEUE if lane == "interactive" else BULK_QUEUE, 2, lane)


@pytest.mark.parametrize("name", ASYNC)
@pytest.mark.parametrize(("bad", "error"), BAD_LANES[:4])
def test_a_bad_lane_is_refused_by_the_async_producers_before_anything_is_sent(
    aio_app: Celery, broker: Broker, name: str, bad: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"lane must be .*interactive, bulk"):
        _run(ASYNC[name](aio_app, lane=bad))
    assert broker.placement() == {INTERACTIVE_QUEUE: 0, BULK_QUEUE: 0}


def test_a_bad_lane_is_refused_even_with_no_texts_to_send(aio_app: Celery) -> None:
    with pytest.raises(EmbeddingInputError, match="lane must be one of interactive, bulk"):
        _run(producers.aembed_texts([], app=aio_app, lane="later"))


def test_the_lane_helpers_name_the_lanes_and_route_to_the_anonymous_exchange() -> None:
    assert check_lane("bulk") == "bulk"
    assert lane_route("bulk") == {"queue": BULK_QUEUE, "exchange": "", "routing_key": BULK_QUEUE}
    assert lane_route("interactive")["routing_key"] == INTERACTIVE_QUEUE
    with pytest.raises(EmbeddingInputTypeError, match="lane must be a str, one of interactive"):
        check_lane(b"bulk")


def test_embed_files_queue_stream_sends_to_the_bulk_lane_unless_told(
    app: Celery, broker: Broker
) -> None:
    stream = sliding.QueueStream(app)
    got: dict[int, Any] = {}
    stream.send(["a", "b"], 5, got.__setitem__)
    while stream.in_flight:
        stream.wait()
    stream.close()
    assert got == {0: VECTOR, 1: VECTOR}
    _assert_all_in(broker, BULK_QUEUE, 2, "bulk")
    with pytest.raises(EmbeddingInputError, match="lane must be one of interactive, bulk"):
        sliding.QueueStream(app, lane="fast")


@pytest.mark.parametrize(
    ("argv", "queue", "lane"),
    [([], BULK_QUEUE, "bulk"), (["--lane", "interactive"], INTERACTIVE_QUEUE, "interactive")],
    ids=["default bulk", "--lane interactive"],
)
def test_the_embed_file_cli_enqueues_in_the_lane_it_is_given(
    app: Celery,
    broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
    queue: str,
    lane: str,
) -> None:
    monkeypatch.setattr(cli, "_project_app", lambda: app)
    monkeypatch.setattr(sliding, "_warn_if_no_worker", lambda app, warn: None)
    source = tmp_path / "in.txt"
    source.write_text("first\nsecond\nthird\n")
    assert cli.main([str(source), "--no-progress", *argv]) == 0
    _assert_all_in(broker, queue, 3, lane)
    records = (tmp_path / "in.txt.embeddings.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["line"] for r in records) == [1, 2, 3]


def test_the_embed_file_cli_refuses_an_unknown_lane_with_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("first\n")
    with pytest.raises(SystemExit) as exited:
        cli.main([str(source), "--lane", "fast"])
    assert exited.value.code == 2
    assert "invalid choice: 'fast' (choose from" in capsys.readouterr().err


def test_the_gateways_queue_service_sends_to_the_lane_and_reads_each_lanes_depth(
    aio_app: Celery, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.service

    fake_broker = fakeredis.FakeAsyncRedis(server=broker.server)
    monkeypatch.setattr(gateway.service, "redis_for_url", lambda _url, _app: fake_broker)

    async def scenario() -> tuple[list[list[float]], dict[str, int], gateway.service.Health]:
        service = gateway.service.QueueService(aio_app, ping_timeout_s=0.01)
        monkeypatch.setattr(service, "_ping", lambda: [{"w1": "pong"}])
        try:
            vectors = await service.embed(["a", "b"], model="m", timeout_s=5, lane="bulk")
            depths = {lane: await service.queue_depth(lane) for lane in ("interactive", "bulk")}
            return vectors, depths, await service.health()
        finally:
            await service.aclose()

    vectors, depths, health = _run(scenario())
    assert vectors == [VECTOR, VECTOR]
    assert broker.placement() == {INTERACTIVE_QUEUE: 0, BULK_QUEUE: 2}
    assert depths == {"interactive": 0, "bulk": 2}
    assert (health.queue_depth, health.lane_depths) == (2, {"interactive": 0, "bulk": 2})
