"""A Redis outage under a running text requeues the text; it is never stored as its failure."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.contrib.testing.mocks import TaskMessage
from celery.exceptions import BackendStoreError, Retry
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.celery_ext.outages import RequeueOnOutageRequest, is_redis_outage
from worker.celery_ext.result_backend import ResultBackend
from worker.errors import (
    EmbeddingAPIError,
    EmbeddingBudgetWaitError,
    EmbeddingResultStoreUnavailableError,
)


def _chained(outer: Exception, cause: BaseException) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        RedisConnectionError("refused"),
        RedisTimeoutError("timed out"),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
        OperationalError("broker unreachable"),
        EmbeddingResultStoreUnavailableError("store"),
        _chained(BackendStoreError("failed to store result"), RedisConnectionError("refused")),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_redis_and_broker_unreachability_count_as_an_outage(exc: Exception) -> None:
    assert is_redis_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        None,
        ValueError("bad"),
        EmbeddingAPIError("rejected", 400, "bad input"),
        BackendStoreError("value too large for Redis backend"),
        _chained(RuntimeError("wrapped"), ValueError("not redis")),
    ],
    ids=repr,
)
def test_other_errors_are_not_an_outage(exc: Exception | None) -> None:
    assert not is_redis_outage(exc)


def test_a_cause_cycle_does_not_loop() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert not is_redis_outage(first)


@pytest.fixture
def app() -> Celery:
    app = Celery("outages-test", set_as_current=False)
    app.conf.result_backend = "worker.celery_ext.result_backend:ResultBackend+redis://127.0.0.1:1/0"
    app.conf.result_backend_always_retry = False
    return app


def test_the_app_builds_this_backend_from_a_prefixed_url(app: Celery) -> None:
    assert isinstance(app.backend, ResultBackend)
    assert app.backend.as_uri() == "redis://127.0.0.1:1/0"


def test_a_write_that_meets_an_outage_raises_the_requeue_error_with_its_cause(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_: Any, **__: Any) -> None:
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(app.backend, "_store_result", unreachable)
    with pytest.raises(EmbeddingResultStoreUnavailableError, match="back to the queue") as info:
        app.backend.store_result("t-1", [0.5], "SUCCESS")
    assert "t-1" in str(info.value)
    assert isinstance(info.value.__cause__, RedisConnectionError)


def test_a_write_that_fails_for_another_reason_raises_as_it_was(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_large(*_: Any, **__: Any) -> None:
        raise BackendStoreError("value too large for Redis backend")

    monkeypatch.setattr(app.backend, "_store_result", too_large)
    with pytest.raises(BackendStoreError, match="too large"):
        app.backend.store_result("t-1", [0.5], "SUCCESS")


def test_an_outage_is_never_stored_as_a_failure_but_a_real_failure_is(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored: list[tuple[str, str]] = []
    monkeypatch.setattr(
        app.backend,
        "store_result",
        lambda task_id, result, state, *a, **k: stored.append((task_id, state)),
    )
    outage = EmbeddingResultStoreUnavailableError("Redis could not be reached")
    assert app.backend.mark_as_failure("t-outage", outage) is None
    app.backend.mark_as_failure("t-rejected", EmbeddingAPIError("rejected", 400, "bad input"))
    assert stored == [("t-rejected", "FAILURE")]


class _RecordingRequest(RequeueOnOutageRequest):
    """The request under test, with the broker side (reject, ack, events) recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, Any]] = []

    def reject(self, requeue: bool = False) -> None:
        self.calls.append(("reject", requeue))

    def acknowledge(self) -> None:
        self.calls.append(("ack", None))

    def send_event(self, type_: str, **fields: Any) -> None:
        self.calls.append(("event", type_))


def _request(app: Celery) -> _RecordingRequest:
    @app.task(name="outages.test", acks_late=True, shared=False)
    def task() -> None:
        return None

    return _RecordingRequest(TaskMessage("outages.test", id="t-1"), app=app, task=task)


def _einfo(exc: Exception) -> ExceptionInfo:
    try:
        raise exc
    except Exception:
        return ExceptionInfo()


def test_a_request_whose_result_met_an_outage_is_requeued_not_acked(app: Celery) -> None:
    request = _request(app)
    request.on_failure(_einfo(EmbeddingResultStoreUnavailableError("Redis gone")), return_ok=True)
    assert request.calls == [("reject", True)]


def test_a_request_that_really_failed_is_acked_and_reported(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = _request(app)
    monkeypatch.setattr(app.backend, "mark_as_failure", lambda *a, **k: None)
    request.on_failure(_einfo(EmbeddingAPIError("rejected", 400, "bad input")), return_ok=True)
    assert ("ack", None) in request.calls
    assert ("event", "task-failed") in request.calls
    assert not any(name == "reject" for name, _ in request.calls)


def test_a_retry_caused_by_an_unreachable_redis_is_acked_not_requeued(app: Celery) -> None:
    # The shared budget's Redis was down: the task asked for a Celery retry, which is
    # already published. Requeueing the message too ran the text twice (issue 27, item 6).
    try:
        try:
            raise RedisConnectionError("Error 111 connecting to the budget's Redis")
        except RedisConnectionError as cause:
            raise EmbeddingBudgetWaitError("the budget's Redis is unreachable") from cause
    except EmbeddingBudgetWaitError as wait_error:
        retry = Retry(exc=wait_error, when=1.0)
        retry.__cause__ = wait_error
    request = _request(app)
    request.on_failure(_einfo(retry), return_ok=True)
    assert ("ack", None) in request.calls
    assert not any(name == "reject" for name, _ in request.calls)


def test_a_result_refused_by_a_full_redis_makes_the_channel_wait_for_room(app: Celery) -> None:
    request = _request(app)
    noted: list[bool] = []
    request.message.channel = SimpleNamespace(note_results_full=lambda: noted.append(True))
    try:
        try:
            raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'")
        except OutOfMemoryError as cause:
            raise EmbeddingResultStoreUnavailableError("no room for the result") from cause
    except EmbeddingResultStoreUnavailableError as exc:
        error = exc
    request.on_failure(_einfo(error), return_ok=True)
    assert noted == [True]
    assert request.calls == [("reject", True)]


def test_a_result_store_outage_that_is_not_a_full_redis_leaves_the_fetch_alone(
    app: Celery,
) -> None:
    request = _request(app)
    noted: list[bool] = []
    request.message.channel = SimpleNamespace(note_results_full=lambda: noted.append(True))
    request.on_failure(_einfo(EmbeddingResultStoreUnavailableError("Redis gone")), return_ok=True)
    assert noted == []
    assert request.calls == [("reject", True)]
