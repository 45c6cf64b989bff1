"""Redis behind Sentinel: the master is killed mid-run, again and again; nothing is lost.

Three real Sentinels, a master and a replica on loopback (tests/integration/sentinelkit.py),
a real worker and producer configured only with the ``sentinel://`` URL.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery.result import AsyncResult
from prometheus_client.parser import text_string_to_metric_families

import producers
import producers.client
from devstack import WorkerProcess, free_port, wait_for
from tests.integration.faultkit import app_for, expected, outcomes
from tests.integration.harness import worker_env
from tests.integration.sentinelkit import MASTER_NAME, SentinelCluster
from worker.errors import EmbeddingQueueUnavailableError
from worker.settings import Settings

pytestmark = pytest.mark.integration

KILLS = 3
TEXTS_PER_KILL = 100
VISIBILITY_TIMEOUT_S = 10


def _queue_depth(port: int) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "embeddings_queue_depth":
                return float(sample.value)
    return None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path / "sentinel") as running:
        yield running


def test_killing_the_master_mid_run_loses_no_text_and_shows_no_failure(
    cluster: SentinelCluster, stub, tmp_path: Path
):
    metrics_port = free_port()
    env = worker_env(
        stub.base_url,
        {
            "REDIS_URL": cluster.url,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
            "BROKER_UNACKED_RESTORE_INTERVAL": "1",
            "EMBEDDINGS_METRICS_PORT": str(metrics_port),
        },
    )
    app = app_for(cluster.url)
    worker = WorkerProcess(env, tmp_path / "worker.log", "sentinel")
    texts: list[str] = []
    results: list[AsyncResult] = []
    try:
        worker.wait_ready(app, timeout_s=60)
        # 100 texts take the worker about 1.3 s at 300 ms per call: each kill lands mid-run.
        stub.set_latency_ms(300)
        failures_seen: set[str] = set()

        def watch() -> None:
            for result in results:
                if result.state == "FAILURE":
                    failures_seen.add(result.id)

        for kill in range(KILLS):
            calls = stub.stats()["ok_calls"]
            batch = [f"across failover {kill}, text {i}" for i in range(TEXTS_PER_KILL)]
            texts.extend(batch)
            results.extend(producers.enqueue_text(text, app=app) for text in batch)
            wait_for(lambda c=calls: stub.stats()["ok_calls"] >= c + 3, 60, "progress")
            during = f"enqueued during failover {kill}"
            sent: dict[str, object] = {}

            def publish(text: str = during, sent: dict[str, object] = sent) -> None:
                # Right after the kill, from another thread: the publish must ride out the
                # Sentinels' switch (EMBEDDINGS_REDIS_FAILOVER_TIMEOUT_S) instead of failing.
                started = time.monotonic()
                sent["started"] = started
                sent["result"] = producers.enqueue_text(text, app=app)
                sent["published_s"] = time.monotonic() - started

            publisher = threading.Thread(target=publish)
            switch_s = cluster.kill_master(on_killed=publisher.start)
            publisher.join(60)
            assert "result" in sent, "the publish during the failover did not return"
            result = sent["result"]
            assert isinstance(result, AsyncResult)
            texts.append(during)
            results.append(result)
            wait_for(result.ready, 60, "the text enqueued during the failover")
            ready_s = time.monotonic() - float(sent["started"])  # type: ignore[arg-type]
            print(f"\nkill {kill}: Sentinels switched in {switch_s:.1f}s; a publish at the kill "
                  f"returned after {sent['published_s']:.1f}s, its vector was readable after "
                  f"{ready_s:.1f}s")  # fmt: skip
            watch()

        def all_done() -> bool:
            watch()
            return all(result.ready() for result in results)

        wait_for(all_done, VISIBILITY_TIMEOUT_S + 120, "every text to finish")
        found = outcomes(results, texts)
        assert found["failed"] == [] and found["wrong"] == []
        assert failures_seen == set()
        assert results[-1].get(timeout=1) == expected(texts[-1])
        stats = stub.stats()
        assert stats["texts_seen"] == len(texts)
        print(f"Sentinel: {stats['total_inputs'] - len(texts)} extra embeddings for "
              f"{len(texts)} texts across {KILLS} failovers; lost 0")  # fmt: skip
        assert worker.alive()
        # The shared budget and the queue gauge reach the master through the Sentinels too.
        assert "no Redis for the shared rate-limit budget" not in worker.log()
        wait_for(lambda: _queue_depth(metrics_port) == 0.0, 30, "the queue gauge to read 0")
    finally:
        # Celery unsubscribes a collected result over the network: collect them while the
        # Sentinels and a master still answer, even when the test failed.
        results.clear()
        gc.collect()
        worker.stop()


def test_a_publish_with_no_master_to_promote_gives_up_after_the_failover_timeout(
    cluster: SentinelCluster, monkeypatch: pytest.MonkeyPatch
):
    app = app_for(cluster.url)
    first = producers.enqueue_text("before the outage", app=app)
    assert first.id
    # Celery unsubscribes a collected result over the network: not once Redis is gone.
    del first
    gc.collect()
    timeout_s = 2.0
    monkeypatch.setattr(producers.client, "_settings", Settings(redis_failover_timeout_s=timeout_s))
    cluster.kill_every_redis()
    started = time.monotonic()
    with pytest.raises(EmbeddingQueueUnavailableError):
        producers.enqueue_text("nowhere to go", app=app)
    elapsed_s = time.monotonic() - started
    print(f"\nno master to promote: the publish gave up after {elapsed_s:.1f}s")
    assert timeout_s <= elapsed_s < timeout_s + 10
