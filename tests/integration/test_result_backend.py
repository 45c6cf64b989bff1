"""The result backend's one-step and batched writes, against the test Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from celery import Celery, states
from celery.result import AsyncResult

from tests.integration.harness import TEST_REDIS_URL
from worker.celery_ext.result_backend import ResultBackend

pytestmark = pytest.mark.integration

VECTOR = [0.25, -0.5, 1.0, 0.125, 2.0, -4.0, 0.0625, 8.0, 0.5]


@pytest.fixture
def backend(app: Celery, clean_redis: redis.Redis) -> ResultBackend:
    return ResultBackend(app=app, url=TEST_REDIS_URL)


def _stored(client: redis.Redis, task_id: str) -> dict[str, Any]:
    raw = client.get(f"celery-task-meta-{task_id}")
    assert raw is not None
    meta: dict[str, Any] = json.loads(raw)
    return meta


def test_a_batch_of_vectors_is_stored_as_celery_would_store_each(backend, clean_redis, app):
    backend.store_result("by-celery", VECTOR, states.SUCCESS)
    assert backend.store_vectors([("batched-1", VECTOR), ("batched-2", VECTOR[::-1])]) is True

    celery_meta = _stored(clean_redis, "by-celery")
    for task_id in ("batched-1", "batched-2"):
        meta = _stored(clean_redis, task_id)
        assert meta.keys() == celery_meta.keys()
        varying = ("task_id", "date_done", "result", "children")
        assert {k: v for k, v in meta.items() if k not in varying} == {
            k: v for k, v in celery_meta.items() if k not in varying
        }
        assert meta["children"] == []  # what Celery stores from inside a task
        assert 0 < clean_redis.ttl(f"celery-task-meta-{task_id}") <= backend.expires
    reader = ResultBackend(app=app, url=TEST_REDIS_URL)
    assert AsyncResult("batched-1", backend=reader).get(timeout=5) == VECTOR
    assert AsyncResult("batched-2", backend=reader).get(timeout=5) == VECTOR[::-1]


def test_a_batch_never_overwrites_an_earlier_success(backend, clean_redis):
    backend.store_result("done-before", [1.0] * 9, states.SUCCESS)
    backend.store_vectors([("done-before", VECTOR)])
    assert _stored(clean_redis, "done-before")["status"] == states.SUCCESS
    reader = AsyncResult("done-before", backend=backend)
    assert reader.get(timeout=5) == [1.0] * 9


def test_a_batch_that_cannot_reach_redis_raises_and_marks_nothing(app, monkeypatch):
    app.conf.result_backend_always_retry = False
    try:
        unreachable = ResultBackend(app=app, url="redis://127.0.0.1:1/0")
        with pytest.raises(redis.ConnectionError):
            unreachable.store_vectors([("t-lost", VECTOR)])
    finally:
        app.conf.result_backend_always_retry = True
    writes: list[bytes] = []
    monkeypatch.setattr(
        ResultBackend,
        "_run_store_script",
        lambda self, batch, *a: writes.extend(k for k, _ in batch),
    )
    ResultBackend(app=app, url=TEST_REDIS_URL).store_result("t-lost", VECTOR, states.SUCCESS)
    assert writes == [b"celery-task-meta-t-lost"]  # the task's own write was not skipped


def test_a_revoked_text_stays_revoked_whatever_is_written_after(backend, clean_redis, app):
    backend.remember_revoked(["revoked-1", "revoked-2"], "test")
    assert backend.revoked_among(["revoked-1", "other", "revoked-2"]) == {"revoked-1", "revoked-2"}
    backend.store_result("revoked-1", VECTOR, states.SUCCESS)
    backend.store_vectors([("revoked-2", VECTOR)])
    backend.store_result("revoked-2", VECTOR, states.SUCCESS)
    for task_id in ("revoked-1", "revoked-2"):
        meta = _stored(clean_redis, task_id)
        assert meta["status"] == states.REVOKED
        assert 0 < clean_redis.ttl(f"celery-task-meta-{task_id}") <= backend.expires
    assert 0 < clean_redis.ttl("embeddings-revoked") <= backend.expires


def test_revoking_a_finished_text_keeps_its_vector(backend, clean_redis, app):
    backend.store_result("done", VECTOR, states.SUCCESS)
    backend.remember_revoked(["done"], "too late")
    assert _stored(clean_redis, "done")["status"] == states.SUCCESS
