"""A publish behind Sentinel retries through a failover, then gives up; plain Redis does not."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

import producers
from producers import client
from producers.core import is_failover_error
from worker.errors import EmbeddingQueueFullError, EmbeddingQueueUnavailableError
from worker.settings import Settings

SENTINELS = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"


def test_the_waits_add_up_to_the_failover_timeout_and_no_more_than_a_second_over() -> None:
    assert client.failover_waits(10.0)[:4] == [0.2, 0.4, 0.8, 1.0]
    for timeout_s in (0.5, 2.0, 10.0, 30.0):
        waits = client.failover_waits(timeout_s)
        assert timeout_s <= sum(waits) < timeout_s + 1.0
        assert max(waits) <= 1.0


class Attempts:
    """Stands in for one publish attempt: fails ``failures`` times with ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.task_ids: list[str] = []
        self.lanes: list[str] = []

    def __call__(
        self, text: str, model: str | None, app: Celery, task_id: str, *, lane: str
    ) -> Any:
        self.task_ids.append(task_id)
        self.lanes.append(lane)
        if len(self.task_ids) <= self.failures:
            raise self.error
        return f"sent {task_id}"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client, "_sleep", slept.append)
    monkeypatch.setattr(client, "_settings", Settings(redis_failover_timeout_s=2.0))
    return slept


def _app(url: str) -> Celery:
    app = Celery("failover-test", set_as_current=False)
    app.conf.broker_url = url
    return app


def test_behind_sentinel_a_publish_retries_with_one_task_id_until_it_goes_through(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    attempts = Attempts(3, EmbeddingQueueUnavailableError("master gone"))
    monkeypatch.setattr(client, "_send_once", attempts)
    sent = producers.enqueue_text("through a failover", app=_app(SENTINELS))
    assert waits == [0.2, 0.4, 0.8]
    assert len(set(attempts.task_ids)) == 1 and len(attempts.task_ids) == 4
    assert sent == f"sent {attempts.task_ids[0]}"
    assert attempts.lanes == ["interactive"] * 4


def test_behind_sentinel_every_attempt_at_a_publish_keeps_its_lane(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    attempts = Attempts(2, EmbeddingQueueUnavailableError("master gone"))
    monkeypatch.setattr(client, "_send_once", attempts)
    producers.enqueue_text("a backfill's text", app=_app(SENTINELS), lane="bulk")
    assert attempts.lanes == ["bulk", "bulk", "bulk"]
    assert len(set(attempts.task_ids)) == 1


def test_behind_sentinel_a_publish_gives_up_once_the_failover_timeout_is_spent(
    monkeypatch: pytest.MonkeyPatch, waits: list[float]
) -> None:
    monkeypatch.setattr(client, "_send_once", Attempts(99, EmbeddingQueueUnavailableError("x")))
    with pytest.raises(EmbeddingQueueUnavailableError):
        producers.enqueue_text("no master", app=_app(SENTINELS))
    assert waits == client.failover_waits(2.0)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis://127.0.0.1:6379/0", EmbeddingQueueUnavailableError("down")),
        (SENTINELS, EmbeddingQueueFullError("full")),
    ],
    ids=["plain Redis down", "Sentinel master full"],
)
def test_a_down_plain_redis_or_a_full_master_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, waits: list[float], url: str, error: Exception
) -> None:
    monkeypatch.setattr(client, "_send_once", Attempts(99, error))
    with pytest.raises(type(error)):
        producers.enqueue_text("refused", app=_app(url))
    assert waits == []


def test_an_exception_chain_that_loops_back_is_read_once() -> None:
    outer, inner = RuntimeError("outer"), ValueError("inner")
    outer.__context__, inner.__context__ = inner, outer  # a cycle Python can build
    assert not is_failover_error(outer)
    inner.__cause__ = ConnectionRefusedError("master gone")  # an OSError behind the loop
    assert is_failover_error(outer)
