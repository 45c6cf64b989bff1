"""The bulk enqueue path behind Sentinel: a chunk refused by a failover is sent again.

The publisher is a fake that plays a script of outcomes, one per chunk attempt; sleeps are
recorded, never slept. The real transaction against real Sentinels is in
tests/integration/test_faults_sentinel.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

import producers
import producers.aio as aio
from producers import client
from worker.celery_ext import bulk_publish
from worker.celery_ext.sentinel import SentinelAtomicFetchChannel
from worker.errors import EmbeddingPartialEnqueueError
from worker.names import BULK_QUEUE, INTERACTIVE_QUEUE
from worker.settings import Settings

SENTINELS = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"
PLAIN = "redis://127.0.0.1:6379/0"
TIMEOUT_S = 2.0
LOST_REPLY = "lost reply"  # the transaction ran, then its answer was lost


def _app(url: str = SENTINELS) -> Celery:
    app = Celery("bulk-failover", set_as_current=False)
    app.conf.update(
        broker_url=url, result_backend=f"worker.celery_ext.result_backend:ResultBackend+{PLAIN}"
    )
    return app


class ScriptedPublisher:
    """Stands in for ``publish_chunks``/``publish_chunk_ids``; one outcome per chunk attempt.

    ``script[n]`` is what the ``n``-th attempt meets: None (committed), an exception (not
    committed), or ``LOST_REPLY`` (committed, then the error). Past the script, commits.
    """

    def __init__(self, script: Sequence[object] = ()) -> None:
        self.script = list(script)
        self.attempts: list[list[str]] = []  # each attempt's task ids
        self.queue: list[str] = []  # what reached Redis, in order
        self.queue_names: list[str | None] = []  # each attempt's destination queue

    def __call__(
        self,
        app: Celery,
        name: str,
        calls: Sequence[Any],
        *,
        chunk_size: int,
        reprs: Any = None,
        task_ids: Sequence[str],
        queue: str | None = None,
    ) -> Iterator[list[str]]:
        assert len(task_ids) == len(calls)
        for start in range(0, len(calls), chunk_size):
            ids = list(task_ids[start : start + chunk_size])
            outcome = self.script.pop(0) if self.script else None
            self.attempts.append(ids)
            self.queue_names.append(queue)
            if outcome is None or outcome == LOST_REPLY:
                self.queue.extend(ids)
            if outcome == LOST_REPLY:
                raise RedisConnectionError("Connection closed by server.")
            if isinstance(outcome, BaseException):
                raise outcome
            yield ids


class AsyncResultsPublisher(ScriptedPublisher):
    """``publish_chunks``: the same, yielding ``AsyncResult``\\s."""

    def __call__(self, app: Celery, *args: Any, **kwargs: Any) -> Iterator[list[Any]]:  # type: ignore[override]
        for ids in super().__call__(app, *args, **kwargs):
            yield [app.AsyncResult(task_id) for task_id in ids]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client, "_sleep", slept.append)
    monkeypatch.setattr(client, "_settings", Settings(redis_failover_timeout_s=TIMEOUT_S))
    return slept


def _ids_publisher(monkeypatch: pytest.MonkeyPatch, script: Sequence[object]) -> ScriptedPublisher:
    fake = ScriptedPublisher(script)
    monkeypatch.setattr(bulk_publish, "publish_chunk_ids", fake)
    return fake


GONE = RedisConnectionError("Error 111 connecting to 127.0.0.1:6380. Connection refused.")
TEXTS = [f"text {i}" for i in range(7)]  # chunks of 3: 3, 3, 1


def test_behind_sentinel_a_refused_chunk_is_sent_again_with_the_same_ids_after_each_wait(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    fake = _ids_publisher(monkeypatch, [None, GONE, GONE])
    ids = client.enqueue_ids(TEXTS, app=_app(), chunk_size=3)
    assert waits == client.failover_waits(TIMEOUT_S)[:2]
    first, second, *_ = fake.attempts
    assert [len(a) for a in fake.attempts] == [3, 3, 3, 3, 1]
    assert fake.attempts[1] == fake.attempts[2] == fake.attempts[3] == ids[3:6]
    assert first == ids[:3] and second == ids[3:6]
    assert fake.queue == ids and len(set(ids)) == len(TEXTS)
    assert fake.queue_names == [INTERACTIVE_QUEUE] * 5


def test_behind_sentinel_a_chunk_sent_again_goes_to_the_same_lanes_queue(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    fake = _ids_publisher(monkeypatch, [None, GONE, GONE])
    ids = client.enqueue_ids(TEXTS, app=_app(), chunk_size=3, lane="bulk")
    assert fake.attempts[1] == fake.attempts[2] == fake.attempts[3] == ids[3:6]
    assert fake.queue_names == [BULK_QUEUE] * 5


def test_each_refused_chunk_gets_the_whole_schedule_once_one_went_through(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    _ids_publisher(monkeypatch, [GONE, None, GONE, GONE, None])
    client.enqueue_ids(TEXTS, app=_app(), chunk_size=3)
    schedule = client.failover_waits(TIMEOUT_S)
    assert waits == [schedule[0], schedule[0], schedule[1]]


def test_caller_chosen_task_ids_are_the_ids_sent_again(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    fake = _ids_publisher(monkeypatch, [GONE])
    chosen = [f"chosen-{i}" for i in range(7)]
    assert client.enqueue_ids(TEXTS, app=_app(), chunk_size=3, task_ids=chosen) == chosen
    assert fake.attempts[0] == fake.attempts[1] == chosen[:3]


@pytest.mark.parametrize(
    "error",
    [
        GONE,
        RedisTimeoutError("Timeout reading from socket"),
        ReadOnlyError("You can't write against a read only replica."),
        OperationalError("Error 111 connecting"),
    ],
    ids=["connection", "timeout", "readonly", "kombu"],
)
def test_the_failover_errors_are_connection_timeout_and_readonly(error: Exception) -> None:
    assert client.is_failover_error(error)
    try:
        raise RuntimeError("result consumer gave up") from error
    except RuntimeError as wrapped:
        assert client.is_failover_error(wrapped)


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("OOM command not allowed"),
        ResponseError("WRONGTYPE Operation against a key"),
        KeyError("a bug"),
    ],
    ids=["full master", "other answer", "bug"],
)
def test_a_full_master_an_other_answer_or_a_bug_is_no_failover(error: Exception) -> None:
    if isinstance(error, OperationalError):
        error.__cause__ = OutOfMemoryError("OOM command not allowed when used memory > maxmemory")
    assert not client.is_failover_error(error)


def test_behind_sentinel_the_spent_budget_raises_the_partial_error_naming_what_was_enqueued(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    fake = _ids_publisher(monkeypatch, [None, *[GONE] * 99])
    with pytest.raises(EmbeddingPartialEnqueueError) as info:
        client.enqueue_ids(TEXTS, app=_app(), chunk_size=3)
    error = info.value
    assert waits == client.failover_waits(TIMEOUT_S)
    assert len(fake.attempts) == 1 + len(waits) + 1
    assert error.not_enqueued_from == 3
    assert [r.id for r in error.enqueued] == fake.queue == fake.attempts[0]
    assert "the first 3 of 7 texts were enqueued, none from index 3 on" in str(error)
    assert isinstance(error.__cause__, RedisConnectionError)


@pytest.mark.parametrize(
    ("url", "error", "partial"),
    [
        (PLAIN, GONE, True),
        (SENTINELS, OperationalError("OOM"), True),
        (SENTINELS, KeyError("a bug"), False),
    ],
    ids=["plain Redis down", "full master", "not the broker"],
)
def test_plain_redis_a_full_master_or_a_bug_fails_at_the_first_attempt(
    monkeypatch: pytest.MonkeyPatch, waits: list[float], url: str, error: Exception, partial: bool
) -> None:
    if isinstance(error, OperationalError):
        error.__cause__ = OutOfMemoryError("OOM command not allowed")
    fake = _ids_publisher(monkeypatch, [None, error])
    expected = EmbeddingPartialEnqueueError if partial else type(error)
    with pytest.raises(expected) as info:
        client.enqueue_ids(TEXTS, app=_app(url), chunk_size=3)
    assert waits == []
    assert len(fake.attempts) == 2
    if partial:
        assert isinstance(info.value, EmbeddingPartialEnqueueError)
        assert info.value.not_enqueued_from == 3
        if url == SENTINELS:
            assert "Redis is full" in str(info.value)


def test_a_reply_lost_after_exec_enqueues_that_chunk_twice_under_the_same_ids(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    # The one duplicate a retry can make (docs/reliability.md): same ids, so the second
    # copy's result write finds SUCCESS and writes nothing.
    fake = _ids_publisher(monkeypatch, [None, LOST_REPLY])
    ids = client.enqueue_ids(TEXTS, app=_app(), chunk_size=3)
    assert fake.queue == [*ids[:6], *ids[3:6], *ids[6:]]
    assert len(set(ids)) == len(ids) == 7
    assert waits == client.failover_waits(TIMEOUT_S)[:1]


def test_enqueue_texts_behind_sentinel_retries_its_chunks_with_the_same_ids(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    fake = AsyncResultsPublisher([GONE, None, ReadOnlyError("READONLY")])
    monkeypatch.setattr(bulk_publish, "publish_chunks", fake)
    results = producers.enqueue_texts(TEXTS, app=_app(), chunk_size=3)
    assert [r.id for r in results] == fake.queue
    assert fake.attempts[0] == fake.attempts[1] and fake.attempts[2] == fake.attempts[3]
    assert waits == [0.2, 0.2]


def test_the_sentinel_channel_publishes_through_the_redis_channels_collector_path() -> None:
    # What bulk_publish relies on behind Sentinel: kombu's SentinelChannel and the project's
    # channel on it inherit the Redis Channel's publish path unchanged.
    for name in ("basic_publish", "_put", "_put_fanout", "prepare_message"):
        assert getattr(SentinelAtomicFetchChannel, name) is getattr(kombu_redis.Channel, name)
    assert issubclass(SentinelAtomicFetchChannel, kombu_redis.SentinelChannel)
    assert bulk_publish.supports_bulk_publish(_app(SENTINELS))
    assert bulk_publish.supports_bulk_publish(_app(PLAIN))
    assert not bulk_publish.supports_bulk_publish(_app("amqp://guest@127.0.0.1//"))


class ChunkScript:
    """Stands in for ``aio._publish_chunk``; one outcome per attempt, as above."""

    def __init__(self, script: Sequence[object]) -> None:
        self.script = list(script)
        self.attempts: list[list[str]] = []
        self.lanes: list[str] = []  # each attempt's lane

    def __call__(
        self, app: Celery, messages: list[tuple[str, str]], model: str | None, lane: str
    ) -> None:
        self.attempts.append([task_id for task_id, _ in messages])
        self.lanes.append(lane)
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, BaseException):
            try:
                raise outcome
            except (OperationalError, RedisConnectionError) as exc:
                raise client.queue_error(exc, "enqueue the text") from exc


def test_the_async_producers_send_a_refused_chunk_again_with_the_same_ids(
    monkeypatch: pytest.MonkeyPatch,
    waits: list[float],
    aio_waits: list[float],
    aio_enqueue: Callable[[Any, list[str]], list[str]],
) -> None:
    chunks = ChunkScript([None, GONE, GONE])
    monkeypatch.setattr(aio, "_publish_chunk", chunks)
    monkeypatch.setattr(aio, "ENQUEUE_CHUNK_SIZE", 3)
    ids = aio_enqueue(_app(), TEXTS)
    assert aio_waits == client.failover_waits(TIMEOUT_S)[:2] and waits == []
    assert chunks.attempts == [ids[:3], ids[3:6], ids[3:6], ids[3:6], ids[6:]]
    assert chunks.lanes == ["interactive"] * 5


def test_the_async_producers_send_a_refused_chunk_again_in_its_lane(
    monkeypatch: pytest.MonkeyPatch,
    waits: list[float],
    aio_waits: list[float],
    aio_enqueue: Callable[..., list[str]],
) -> None:
    chunks = ChunkScript([None, GONE, GONE])
    monkeypatch.setattr(aio, "_publish_chunk", chunks)
    monkeypatch.setattr(aio, "ENQUEUE_CHUNK_SIZE", 3)
    ids = aio_enqueue(_app(), TEXTS, lane="bulk")
    assert chunks.attempts == [ids[:3], ids[3:6], ids[3:6], ids[3:6], ids[6:]]
    assert chunks.lanes == ["bulk"] * 5


def test_the_async_producers_raise_the_partial_error_once_the_budget_is_spent(
    monkeypatch: pytest.MonkeyPatch,
    waits: list[float],
    aio_waits: list[float],
    aio_enqueue: Callable[[Any, list[str]], list[str]],
) -> None:
    chunks = ChunkScript([None, *[GONE] * 99])
    monkeypatch.setattr(aio, "_publish_chunk", chunks)
    monkeypatch.setattr(aio, "ENQUEUE_CHUNK_SIZE", 3)
    with pytest.raises(EmbeddingPartialEnqueueError) as info:
        aio_enqueue(_app(), TEXTS)
    assert aio_waits == client.failover_waits(TIMEOUT_S)
    assert info.value.not_enqueued_from == 3
    assert [r.id for r in info.value.enqueued] == chunks.attempts[0]


def test_the_async_producers_on_plain_redis_fail_at_the_first_refusal(
    monkeypatch: pytest.MonkeyPatch,
    waits: list[float],
    aio_waits: list[float],
    aio_enqueue: Callable[[Any, list[str]], list[str]],
) -> None:
    chunks = ChunkScript([GONE])
    monkeypatch.setattr(aio, "_publish_chunk", chunks)
    with pytest.raises(EmbeddingPartialEnqueueError) as info:
        aio_enqueue(_app(PLAIN), TEXTS)
    assert aio_waits == [] and len(chunks.attempts) == 1
    assert info.value.not_enqueued_from == 0
