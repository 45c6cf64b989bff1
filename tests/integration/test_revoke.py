"""producers.revoke: a revoked text is never embedded, and ends (and stays) REVOKED."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import producers
from devstack import free_port, wait_for
from tests.integration.faultkit import expected, wait_all_ready
from worker.names import TASK_QUEUE
from worker.revocation import REVOKED_KEY

pytestmark = pytest.mark.integration


def _pending_texts(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "embeddings_pending_texts":
                return float(sample.value)
    return 0.0


def _drained(client) -> bool:
    return client.llen(TASK_QUEUE) == 0 and client.hlen("unacked") == 0


def test_texts_revoked_before_any_worker_starts_are_never_embedded(
    app, clean_redis, start_worker, stub
):
    results = [producers.enqueue_text(f"revoked early {i}", app=app) for i in range(50)]
    producers.revoke([r.id for r in results], app=app)
    assert clean_redis.zcard(REVOKED_KEY) == 50
    assert {r.state for r in results} == {"REVOKED"}

    start_worker(stub.base_url, name="late")
    after = producers.enqueue_text("after the revoked ones", app=app)
    assert after.get(timeout=30) == expected("after the revoked ones")
    wait_for(lambda: _drained(clean_redis), 60, "every revoked message to be acked")
    assert stub.stats()["texts_seen"] == 1
    assert {r.state for r in results} == {"REVOKED"}
    assert all(isinstance(r.result, Exception) for r in results)


def test_texts_revoked_while_waiting_in_the_micro_batcher_never_reach_the_api(
    app, clean_redis, start_worker, stub
):
    port = free_port()
    # One call at a time; a slow API holds it, so the next texts wait in the micro-batcher.
    start_worker(
        stub.base_url,
        {"EMBEDDINGS_POOL_SIZE": "1", "EMBEDDINGS_METRICS_PORT": str(port)},
        name="waiting",
    )
    stub.set_latency_ms(3000)
    blocker = producers.enqueue_text("in the call", app=app)
    wait_for(lambda: stub.stats()["current_concurrency"] == 1, 60, "the first call to be held")
    waiting = [producers.enqueue_text(f"waiting {i}", app=app) for i in range(8)]
    wait_for(lambda: _pending_texts(port) == 8, 60, "8 texts to wait in the micro-batcher")

    producers.revoke([r.id for r in waiting], app=app)
    stub.set_latency_ms(20)
    wait_all_ready([blocker, *waiting], 60, "every text to finish")
    assert blocker.get(timeout=1) == expected("in the call")
    assert {r.state for r in waiting} == {"REVOKED"}
    wait_for(lambda: _drained(clean_redis), 60, "every message to be acked")
    assert stub.stats()["texts_seen"] == 1
    assert stub.stats()["calls"] == 1

    # Still REVOKED once the worker has embedded more: nothing wrote over them.
    assert producers.enqueue_text("one more", app=app).get(timeout=30) == expected("one more")
    assert {r.state for r in waiting} == {"REVOKED"}
