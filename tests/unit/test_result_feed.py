"""``ResultFeed`` and ``SyncResultWaiter`` ride out a Redis that stops answering (fakeredis).

fakeredis's ``connected = False`` makes every command raise ``ConnectionError``, as a
restarting Redis does; the waits between attempts go to an injected ``sleep``.
"""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
from celery import Celery, states

from worker.celery_ext.result_feed import ResultFeed, SyncResultWaiter
from worker.errors import EmbeddingResultStoreUnavailableError


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def app(server: fakeredis.FakeServer) -> Iterator[Celery]:
    celery_app = Celery("feed-test", backend="redis://127.0.0.1:1/0", set_as_current=False)
    celery_app.conf.result_serializer = "json"
    celery_app.backend.client = fakeredis.FakeRedis(server=server)
    yield celery_app
    celery_app.close()


def _finish(app: Celery, task_id: str, value: list[float]) -> None:
    app.backend.store_result(task_id, value, states.SUCCESS)


def test_a_feed_whose_redis_goes_away_raises_nothing_and_reads_what_was_stored_meanwhile(
    app: Celery, server: fakeredis.FakeServer
):
    sleeps: list[float] = []
    feed = ResultFeed(app, sleep=sleeps.append)
    feed.add(["a", "b"])
    _finish(app, "a", [1.0])
    assert feed.poll(1) == [("a", [1.0])]

    server.connected = False
    assert feed.poll(0.05) == []
    assert feed.outage is not None
    assert sleeps and all(0 < s <= 0.05 for s in sleeps), "it waits, within the poll's time"

    server.connected = True
    _finish(app, "b", [2.0])  # stored while the feed was cut off: no message reaches it
    assert feed.poll(1) == [("b", [2.0])]
    assert feed.outage is None
    feed.close()


def test_a_feed_added_to_while_redis_is_down_subscribes_once_it_is_back(
    app: Celery, server: fakeredis.FakeServer
):
    feed = ResultFeed(app, sleep=lambda _s: None)
    server.connected = False
    feed.add(["late"])  # the SUBSCRIBE fails: kept for the next subscription
    assert feed.outage is not None and feed.waiting == 1
    server.connected = True
    _finish(app, "late", [3.0])
    assert feed.poll(1) == [("late", [3.0])]
    feed.close()


def test_a_waiter_past_its_deadline_with_redis_down_raises_the_result_store_error(
    app: Celery, server: fakeredis.FakeServer
):
    _finish(app, "done", [1.0])
    server.connected = False
    with pytest.raises(EmbeddingResultStoreUnavailableError, match="2 of 2 texts") as info:
        SyncResultWaiter(app, sleep=lambda _s: None).wait(["done", "pending"], 0.05)
    assert isinstance(info.value.__cause__, Exception)


def test_a_waiter_past_its_deadline_with_redis_up_returns_what_it_has(app: Celery):
    _finish(app, "done", [1.0])
    assert SyncResultWaiter(app).wait(["done", "pending"], 0.05) == {0: [1.0]}


def test_forget_deletes_exactly_the_results_named_read_chunk_keys_per_del(
    app: Celery, monkeypatch: pytest.MonkeyPatch
):
    for task_id in ("a", "b", "c", "kept"):
        _finish(app, task_id, [1.0])
    client = app.backend.client
    deletes: list[int] = []
    delete = client.delete

    def counted(*keys: bytes) -> int:
        deletes.append(len(keys))
        return int(delete(*keys))

    monkeypatch.setattr(client, "delete", counted)
    feed = ResultFeed(app, read_chunk=2)
    feed.forget(["a", "b", "c"])
    assert deletes == [2, 1]
    stored = [bool(client.exists(app.backend.get_key_for_task(t))) for t in ("a", "b", "c")]
    assert stored == [False, False, False]
    assert app.backend.get_task_meta("kept")["result"] == [1.0]
    feed.close()
