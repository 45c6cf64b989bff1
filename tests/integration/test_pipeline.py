"""The pipeline end to end: producers → Redis → a real worker subprocess → the stub API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

import producers
from devstack import wait_for
from tests.integration.faultkit import expected
from tests.integration.harness import REPO_ROOT, TEST_REDIS_URL, worker_env
from worker.errors import EmbeddingAPIError, EmbeddingInputError
from worker.names import BULK_QUEUE, INTERACTIVE_QUEUE

pytestmark = pytest.mark.integration


def test_two_thousand_texts_enqueued_one_by_one_end_in_full_calls(start_worker, stub, app):
    stub.set_latency_ms(50)
    texts = [f"document {i}: the quick brown fox {i % 37}" for i in range(2000)]
    results = [producers.enqueue_text(text, app=app) for text in texts]
    # The worker starts on the backlog, and a partial batch waits 2 s for texts: calls fill
    # by count however slowly a busy machine feeds its threads. At the default (nagle,
    # 0.1 s) a starved intake rightly sends what waits when the calls in flight end;
    # scripts/bench b1 measures the default's texts per call on an unshared machine.
    start_worker(
        stub.base_url, {"EMBEDDINGS_FLUSH_POLICY": "interval", "EMBEDDINGS_FLUSH_INTERVAL_S": "2"}
    )
    vectors = [result.get(timeout=120) for result in results]
    assert all(result.state == "SUCCESS" for result in results)
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == expected(text)
    stats = stub.stats()
    assert stats["total_inputs"] == 2000
    assert stats["ok_calls"] <= 251, f"{stats['ok_calls']} calls for 2000 texts"
    assert max(stats["inputs_per_call"]) <= 8


def test_one_text_on_an_idle_system_is_not_held_for_a_full_batch(
    start_worker, stub, app, clean_redis
):
    # A flush interval far longer than the wait allowed below: a text held for a full batch,
    # or for the interval, fails the deadline; one sent at once (nagle: no call in flight)
    # meets it however busy the machine is.
    start_worker(stub.base_url, {"EMBEDDINGS_FLUSH_INTERVAL_S": "60"})
    stub.set_latency_ms(50)
    result = producers.enqueue_text("a lonely text", app=app)
    # Until its vector is stored (polled every 5 ms): what the worker did, not how soon this
    # process's get() heard of it.
    wait_for(
        lambda: clean_redis.exists(f"celery-task-meta-{result.id}"),
        30,
        "the lonely text's vector (held for the 60 s flush interval?)",
    )
    assert result.get(timeout=10) == expected("a lonely text")
    assert stub.stats()["inputs_per_call"] == [1]


def test_a_rejected_text_fails_alone_while_its_seven_neighbours_succeed(start_worker, stub, app):
    # A long flush interval makes all eight share one call before the API rejects it.
    start_worker(stub.base_url, {"EMBEDDINGS_FLUSH_INTERVAL_S": "1.0"})
    texts = [f"neighbour {i}" for i in range(8)]
    texts[3] = "this one is __REJECT__ by the API"
    results = [producers.enqueue_text(text, app=app) for text in texts]
    for i, result in enumerate(results):
        if i == 3:
            with pytest.raises(EmbeddingAPIError) as info:
                result.get(timeout=30)
            assert info.value.status_code == 400
            assert "disallowed" in str(info.value)
            assert result.state == "FAILURE"
        else:
            assert result.get(timeout=30) == expected(texts[i])
    stats = stub.stats()
    assert stats["failed_calls"] >= 1
    assert stats["total_inputs"] == 7


def test_an_outage_longer_than_in_process_retries_ends_in_success(start_worker, stub, app):
    # In-process: 2 retries of ≤0.1 s; the outage lasts 3 s, so only Celery retries outlast it.
    start_worker(stub.base_url, {"EMBEDDINGS_MAX_RETRIES": "2", "EMBEDDINGS_MAX_BACKOFF_S": "0.1"})
    stub.add_fault(status=503, duration_s=3.0)
    texts = [f"during the outage {i}" for i in range(10)]
    results = [producers.enqueue_text(text, app=app) for text in texts]
    vectors = [result.get(timeout=60) for result in results]
    assert vectors == [expected(text) for text in texts]
    assert stub.stats()["failed_calls"] > 3


def test_a_result_is_readable_from_a_fresh_process_knowing_only_the_id(start_worker, stub, app):
    start_worker(stub.base_url)
    task_id = producers.enqueue_text("find me later", app=app).id
    reader = (
        "import json, sys, worker; from celery.result import AsyncResult; "
        "print(json.dumps(AsyncResult(sys.argv[1], app=worker.app).get(timeout=30)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", reader, task_id],
        env=worker_env(stub.base_url),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == expected("find me later")
    ttl = redis.Redis.from_url(TEST_REDIS_URL).ttl(f"celery-task-meta-{task_id}")
    assert 0 < ttl <= int(app.conf.result_expires)


@pytest.mark.parametrize("bad", ["", "   ", 42, None, "bad\ud800surrogate", "x" * 40_000])
def test_bad_input_never_reaches_the_queue(clean_redis: redis.Redis, app, bad):
    with pytest.raises((EmbeddingInputError, TypeError)):
        producers.enqueue_text(bad, app=app)
    with pytest.raises(EmbeddingInputError):
        producers.enqueue_texts(["fine", bad, "also fine"], app=app)
    assert clean_redis.llen(INTERACTIVE_QUEUE) == clean_redis.llen(BULK_QUEUE) == 0
    assert clean_redis.keys("celery-task-meta-*") == []
