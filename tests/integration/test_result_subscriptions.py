"""Whether ``worker.celery_ext.subscriptions`` still earns its place (issue 25).

Celery's Redis result consumer already subscribes a result when it is waited for, and then
reads the stored value, so a result written before anyone listened is not lost: the first
test shows that with no subscription at send time. What Celery does per result is one
``SUBSCRIBE`` round trip each; ``subscribe_results`` sends a chunk's channels in one, and a
join then sends none. The second test counts the commands both ways: that count is why
``bulk_publish`` keeps the module (``enqueue_texts`` hands the caller ``AsyncResult``\\s that
it joins).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import ResultSet
from redis.client import PubSub

from tests.integration.harness import TEST_REDIS_URL
from worker.celery_ext.subscriptions import subscribe_results

TASKS = 20


@pytest.fixture
def results_app(clean_redis: redis.Redis) -> Iterator[Celery]:
    app = Celery("subscriptions-proof", backend=TEST_REDIS_URL, set_as_current=False)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def subscribes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every ``SUBSCRIBE`` command a ``PubSub`` sends, with its channels."""
    sent: list[tuple[Any, ...]] = []
    original = PubSub.subscribe

    def counting(self: PubSub, *channels: Any, **named: Any) -> Any:
        sent.append(channels)
        return original(self, *channels, **named)

    monkeypatch.setattr(PubSub, "subscribe", counting)
    return sent


def _store_done(app: Celery, task_ids: list[str]) -> None:
    for task_id in task_ids:
        app.backend.mark_as_done(task_id, [float(len(task_id))])


def test_celery_finds_a_result_stored_before_anyone_subscribed(
    results_app: Celery, subscribes: list[tuple[Any, ...]]
) -> None:
    ids = [f"early-{i}" for i in range(TASKS)]
    _store_done(results_app, ids)  # the worker finished before the producer listened
    joined = ResultSet([results_app.AsyncResult(i) for i in ids], app=results_app)
    assert joined.join_native(timeout=30) == [[float(len(i))] for i in ids]
    # ...but it subscribed one result at a time to get there.
    assert len(subscribes) == TASKS


def test_a_chunk_subscribed_at_send_joins_with_one_subscribe_instead_of_one_per_result(
    results_app: Celery, subscribes: list[tuple[Any, ...]]
) -> None:
    ids = [f"chunk-{i}" for i in range(TASKS)]
    assert subscribe_results(results_app.backend, None, ids) == 1
    _store_done(results_app, ids)
    joined = ResultSet([results_app.AsyncResult(i) for i in ids], app=results_app)
    assert joined.join_native(timeout=30) == [[float(len(i))] for i in ids]
    assert len(subscribes) == 1 and len(subscribes[0]) == TASKS
