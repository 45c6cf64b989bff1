"""Redis faults, on a private redis-server this test starts and restarts (never the shared one).

The server keeps an append-only file, as a production Redis should: a restart then keeps the
queue, the unacked copies and the results. (A Redis that restarts empty has lost its queue,
and no client setting brings it back.)
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import producers
from devstack import WorkerProcess, wait_for
from tests.integration.faultkit import (
    IGNORE_RESULT_DEL_IN_OUTAGES,
    RedisServer,
    app_for,
    outcomes,
    wait_all_ready,
)
from tests.integration.harness import worker_env
from worker.errors import EmbeddingQueueUnavailableError

pytestmark = [
    pytest.mark.integration,
    IGNORE_RESULT_DEL_IN_OUTAGES,
]

# A correctness bound on how long a producer may take to say Redis is gone, not a benchmark.
PRODUCER_ERROR_BOUND_S = 15.0
VISIBILITY_TIMEOUT_S = 10


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", persistent=True) as server:
        yield server


@pytest.fixture(params=["retried", "not-retried"])
def private_worker(
    request: pytest.FixtureRequest, private_redis: RedisServer, stub, tmp_path: Path
) -> Iterator[WorkerProcess]:
    overrides = {
        "REDIS_URL": private_redis.url,
        "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "BROKER_UNACKED_RESTORE_INTERVAL": "1",
    }
    if request.param == "not-retried":
        # Every result write that meets the outage fails at once, so each finished text takes
        # the requeue path of worker/celery_ext/outages.py instead of riding out the blip.
        overrides["EMBEDDINGS_RESULT_BACKEND_MAX_RETRIES"] = "0"
    worker = WorkerProcess(worker_env(stub.base_url, overrides), tmp_path / "worker.log", "rf")
    worker.wait_ready(app_for(private_redis.url))
    yield worker
    worker.stop()


def test_a_redis_restart_mid_run_is_survived_and_every_text_finishes(
    request: pytest.FixtureRequest, private_redis: RedisServer, private_worker: WorkerProcess, stub
):
    app = app_for(private_redis.url)
    stub.set_latency_ms(100)
    texts = [f"across a redis restart {i}" for i in range(400)]
    results = [producers.enqueue_text(text, app=app) for text in texts]
    wait_for(lambda: stub.stats()["ok_calls"] >= 5, 60, "the worker to be mid-run")

    private_redis.stop()
    started = time.monotonic()
    with pytest.raises(EmbeddingQueueUnavailableError, match="broker is unreachable"):
        producers.enqueue_text("while redis is down", app=app)
    refused_after_s = time.monotonic() - started
    print(f"\nRedis down: the producer was refused after {refused_after_s:.2f}s")
    assert refused_after_s < PRODUCER_ERROR_BOUND_S
    private_redis.start()

    wait_all_ready(results, VISIBILITY_TIMEOUT_S + 60, "every text to finish after the restart")
    found = outcomes(results, texts)
    assert found["failed"] == [] and found["wrong"] == []
    assert len(found["ok"]) == len(texts)
    stats = stub.stats()
    assert stats["texts_seen"] == len(texts)
    print(f"Redis restart: {stats['total_inputs'] - len(texts)} texts embedded twice; lost 0")
    assert private_worker.alive()
    requeued = private_worker.log().count("goes back to the queue; requeued")
    print(f"Redis restart: {requeued} texts requeued because their result could not be stored")
    if request.node.callspec.params["private_worker"] == "not-retried":
        assert requeued > 0, "no result write met the outage: the test did not test the requeue"
    # The producer works again without being restarted either.
    assert producers.enqueue_text("after the restart", app=app).get(timeout=30) is not None


def test_a_producer_gets_a_clear_error_within_a_bounded_time_while_redis_is_down(
    private_redis: RedisServer,
):
    app = app_for(private_redis.url)
    assert producers.enqueue_text("before the outage", app=app).id
    private_redis.stop()
    for attempt in range(2):
        started = time.monotonic()
        with pytest.raises(EmbeddingQueueUnavailableError) as info:
            producers.enqueue_texts([f"refused {attempt}", "and me"], app=app)
        elapsed_s = time.monotonic() - started
        print(f"\nRedis down, attempt {attempt}: refused after {elapsed_s:.2f}s")
        assert elapsed_s < PRODUCER_ERROR_BOUND_S, f"attempt {attempt} took {elapsed_s:.1f}s"
        assert "could not enqueue the text: the broker is unreachable" in str(info.value)
        assert isinstance(info.value.__cause__, Exception)


def test_a_producer_gets_a_clear_error_within_a_bounded_time_while_redis_hangs(
    private_redis: RedisServer,
):
    # SIGSTOP: the port still accepts connections but nothing answers, as with a blackholed
    # network or a Redis stuck in a fork. Only socket timeouts bound the wait here.
    app = app_for(private_redis.url)
    assert producers.enqueue_text("before the hang", app=app).id
    assert private_redis.proc is not None
    private_redis.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(EmbeddingQueueUnavailableError, match="broker is unreachable"):
            producers.enqueue_text("into the void", app=app)
        elapsed_s = time.monotonic() - started
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    print(f"\nRedis hung: the producer was refused after {elapsed_s:.2f}s")
    assert elapsed_s < PRODUCER_ERROR_BOUND_S
