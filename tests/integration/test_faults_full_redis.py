"""A full Redis (maxmemory, noeviction): producers are told so, workers wait, the backlog drains.

On a private redis-server this test starts with a small ``maxmemory``; nothing is evicted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import producers
from devstack import WorkerProcess, wait_for
from stubapi.vectors import vector_for
from tests.integration.faultkit import (
    IGNORE_RESULT_DEL_IN_OUTAGES,
    RedisServer,
    app_for,
    wait_all_ready,
)
from tests.integration.harness import worker_env
from worker.errors import EmbeddingQueueFullError
from worker.names import TASK_QUEUE

pytestmark = [
    pytest.mark.integration,
    IGNORE_RESULT_DEL_IN_OUTAGES,
]

MAXMEMORY = "4mb"
MAXMEMORY_BYTES = 4 * 1024 * 1024
VISIBILITY_TIMEOUT_S = 10


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[RedisServer]:
    args = ["--maxmemory", MAXMEMORY, "--maxmemory-policy", "noeviction"]
    with RedisServer(tmp_path / "redis", extra_args=args) as server:
        yield server


def _worker(redis: RedisServer, stub, tmp_path: Path, name: str, dims: int) -> WorkerProcess:
    env = worker_env(
        stub.base_url,
        {
            "REDIS_URL": redis.url,
            "EMBEDDINGS_DIMENSIONS": str(dims),
            "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
            "BROKER_UNACKED_RESTORE_INTERVAL": "1",
        },
    )
    return WorkerProcess(env, tmp_path / f"{name}.log", name)


# 16 dimensions: a result is smaller than its message, so acks free more than results take.
# 1024: a result (~5.6 kB) is larger than its message (~4.6 kB): results stop fitting, and
# texts whose result found no room go back to the queue until Redis gets memory.
@pytest.mark.parametrize("dims", [16, 1024], ids=["small-results", "large-results"])
def test_a_full_redis_refuses_texts_by_name_and_drains_once_memory_is_free(
    full_redis: RedisServer, stub, tmp_path: Path, dims: int
):
    app = app_for(full_redis.url)
    first = _worker(full_redis, stub, tmp_path, "first", dims)
    try:
        first.wait_ready(app)
        # The worker stops taking texts, so the queue grows until Redis is full.
        app.control.cancel_consumer(TASK_QUEUE, destination=[first.hostname], reply=True)
        texts: list[str] = []
        results = []
        with pytest.raises(EmbeddingQueueFullError, match="Redis is full"):
            while True:
                text = f"filling redis {len(texts)} " + "x" * 2000
                results.append(producers.enqueue_text(text, app=app))
                texts.append(text)
        print(f"\nRedis full after {len(texts)} texts of 2,000 characters")
        assert len(texts) > 100

        # Both an old and a new worker live through it; the new one starts while Redis is full.
        second = _worker(full_redis, stub, tmp_path, "second", dims)
        try:
            wait_for(lambda: "ready." in second.log() or not second.alive(), 60, "second ready")
            assert second.alive(), second.log()
            app.control.add_consumer(TASK_QUEUE, destination=[first.hostname])
            # A little room, as a deploy or an expiring key would make: texts are fetched and
            # embedded, and their results soon fill it again. Without it the test would wait
            # on whatever the server's own buffers happen to free on a busy machine.
            with full_redis.client() as client:
                client.config_set("maxmemory", str(MAXMEMORY_BYTES + MAXMEMORY_BYTES // 20))
            wait_for(lambda: stub.stats()["ok_calls"] > 0, 60, "texts to be embedded")
            wait_for(lambda: "Redis is full" in first.log() + second.log(), 60, "a full Redis")
            assert first.alive() and second.alive()

            with full_redis.client() as client:
                client.config_set("maxmemory", "0")
            started = time.monotonic()
            wait_all_ready(results, VISIBILITY_TIMEOUT_S + 90, "the backlog to drain")
            print(f"drained in {time.monotonic() - started:.1f}s after memory was freed")
            failed = [f"{r.state}" for r in results if r.state != "SUCCESS"]
            assert failed == []
            for result, text in zip(results, texts, strict=True):
                assert result.result == pytest.approx(vector_for(text, dims), rel=1e-6, abs=1e-7)
            stats = stub.stats()
            assert stats["texts_seen"] == len(texts)
            print(f"full Redis: {stats['total_inputs'] - len(texts)} texts embedded twice")
            logs = first.log() + second.log()
            requeued = logs.count("goes back to the queue; requeued")
            swept = logs.count("the sweep redelivers it once")
            print(f"full Redis: {requeued} texts requeued, {swept} left to the sweep")
            assert first.alive() and second.alive()
        finally:
            second.stop()
    finally:
        first.stop()
