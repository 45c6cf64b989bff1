"""The shared budget's own Redis (``EMBEDDINGS_LIMITER_URL``) dies mid-run: nothing paid twice.

Two workers embed 2,000 texts under a shared budget kept in a private redis-server, which
is killed partway and started again a few seconds later. While it is down no call goes
around the budget; texts wait, then become Celery retries. Every text must end SUCCESS with
its own vector, and the API must see each text once (issue 27, item 6: 2,045 inputs for
2,000 texts before).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import producers
from devstack import wait_for
from tests.integration.faultkit import IGNORE_RESULT_DEL_IN_OUTAGES, RedisServer, expected

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    IGNORE_RESULT_DEL_IN_OUTAGES,
]

TEXTS = 2000


@pytest.fixture
def budget_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "budget") as server:
        yield server


def test_a_budget_redis_killed_mid_run_costs_no_text_twice(
    start_worker, stub, app, budget_redis: RedisServer
):
    stub.set_latency_ms(40)
    texts = [f"budget outage {i}" for i in range(TEXTS)]
    env = {
        "EMBEDDINGS_LIMITER_URL": budget_redis.url,
        "EMBEDDINGS_RPM_LIMIT": "60000",
        "EMBEDDINGS_LIMITER_MAX_WAIT_S": "1",
        "EMBEDDINGS_TASK_RETRY_BACKOFF_S": "0.5",
        "EMBEDDINGS_TASK_RETRY_BACKOFF_MAX_S": "2",
    }
    workers = [start_worker(stub.base_url, env, name=f"budgetdown{i}") for i in range(2)]
    ids = producers.client.enqueue_ids(texts, app=app)
    wait_for(lambda: stub.stats()["texts_seen"] >= 300, 60, "the run to be under way")
    budget_redis.stop()
    down_at = stub.stats()["total_inputs"]
    wait_for(
        lambda: sum(w.log().count("Celery retry") for w in workers) >= 50,
        60,
        "texts to become Celery retries while the budget is down",
    )
    during = stub.stats()["total_inputs"] - down_at
    budget_redis.start()

    vectors = producers.client.wait_all(ids, 180, app)
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == expected(text)
    api = stub.stats()
    print(
        f"\nbudget Redis down: {during} inputs sent during the outage; "
        f"{api['total_inputs']} API inputs for {TEXTS} texts"
    )
    assert api["texts_seen"] == TEXTS
    assert api["total_inputs"] <= TEXTS, f"{api['total_inputs'] - TEXTS} texts paid twice"
    assert all(w.alive() for w in workers)
