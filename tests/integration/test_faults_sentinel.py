"""Redis behind Sentinel: the master is killed mid-run, again and again; nothing is lost.

Three real Sentinels, a master and a replica on loopback (tests/integration/sentinelkit.py),
a real worker and producer configured only with the ``sentinel://`` URL.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery.result import AsyncResult
from prometheus_client.parser import text_string_to_metric_families

import producers
import producers.client
from devstack import WorkerProcess, free_port, wait_for
from tests.integration.faultkit import IGNORE_RESULT_DEL_IN_OUTAGES, app_for, expected, outcomes
from tests.integration.sentinelkit import SentinelCluster
from worker.errors import EmbeddingQueueUnavailableError
from worker.settings import Settings

pytestmark = [
    pytest.mark.integration,
    IGNORE_RESULT_DEL_IN_OUTAGES,
]

KILLS = 3
TEXTS_PER_KILL = 100
VISIBILITY_TIMEOUT_S = 10


def _queue_depth(port: int) -> float | None:
    """Texts waiting in both lanes' queues, as the worker's gauge reports them."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    depths = [
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "embeddings_queue_depth"
    ]
    return sum(depths) if depths else None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path / "sentinel") as running:
        yield running


def test_killing_the_master_mid_run_loses_no_text_and_shows_no_failure(
    cluster: SentinelCluster, stub, tmp_path: Path
):
    metrics_port = free_port()
    env = cluster.worker_env(
        stub.base_url, VISIBILITY_TIMEOUT_S, {"EMBEDDINGS_METRICS_PORT": str(metrics_port)}
    )
    app = app_for(cluster.url)
    worker = WorkerProcess(env, tmp_path / "worker.log", "sentinel")
    texts: list[str] = []
    results: list[AsyncResult] = []
    try:
        worker.wait_ready(app)
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
        wait_for(lambda: _queue_depth(metrics_port) == 0.0, 60, "the queue gauge to read 0")
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


class TransactionSpy:
    """Counts this process's ``MULTI``/``EXEC`` pipelines that carry ``LPUSH``\\es, and those.

    ``before_nth`` runs once, just before the ``nth`` transaction is sent.
    """

    def __init__(self, nth: int = 0, before_nth: Callable[[], object] = lambda: None) -> None:
        self.nth = nth
        self.before_nth = before_nth
        self.seen = 0
        self.committed: list[int] = []  # LPUSHes of each transaction Redis answered
        self.failed: list[int] = []  # LPUSHes of each transaction that raised

    def __call__(self, original: Any) -> Any:
        def execute(pipe: Any, raise_on_error: bool = True) -> Any:
            lpushes = sum(1 for args, _ in pipe.command_stack if str(args[0]).upper() == "LPUSH")
            if not (pipe.transaction and lpushes):
                return original(pipe, raise_on_error)  # kombu's own bookkeeping, say
            self.seen += 1
            if self.seen == self.nth:
                self.before_nth()
            try:
                answer = original(pipe, raise_on_error)
            except Exception:
                self.failed.append(lpushes)
                raise
            self.committed.append(lpushes)
            return answer

        return execute


BULK_TEXTS = 1500
BULK_CHUNK = 250


def test_a_bulk_enqueue_rides_out_a_master_kill_and_every_text_gets_its_vector(
    cluster: SentinelCluster, stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    env = cluster.worker_env(stub.base_url, VISIBILITY_TIMEOUT_S)
    app = app_for(cluster.url)
    # Room for a loaded machine's switch (about 2.3 s here) several times over.
    monkeypatch.setattr(producers.client, "_settings", Settings(redis_failover_timeout_s=20.0))
    worker = WorkerProcess(env, tmp_path / "worker.log", "sentinel-bulk")
    killer: list[threading.Thread] = []
    results: list[Any] = []
    try:
        worker.wait_ready(app)
        # enqueue_texts (results subscribed per chunk) behind Sentinel, no kill: 3 chunks.
        original = redis.client.Pipeline.execute
        spy = TransactionSpy()
        monkeypatch.setattr(redis.client.Pipeline, "execute", spy(original))
        before = [f"bulk before the kill {i}" for i in range(3 * BULK_CHUNK)]
        results.extend(producers.enqueue_texts(before, app=app, chunk_size=BULK_CHUNK))
        ids = [r.id for r in results]
        assert spy.committed == [BULK_CHUNK] * 3
        assert producers.client.wait_all(ids, 60, app) == [expected(t) for t in before]
        # Celery unsubscribes a collected result over the network: not once the master died.
        results.clear()
        gc.collect()

        def kill() -> None:
            # Every chunk committed so far is on the replica first: losing an acknowledged
            # write to asynchronous replication is a separate, documented limit.
            with cluster.client(cluster.master_port) as master:
                master.execute_command("WAIT", 1, 5000)
            killed = threading.Event()
            thread = threading.Thread(target=cluster.kill_master, args=(killed.set,))
            killer.append(thread)
            thread.start()
            assert killed.wait(30), "the master was not killed"

        # enqueue_ids across the kill: the 3rd of 6 chunks meets a dead master.
        spy = TransactionSpy(nth=3, before_nth=kill)
        monkeypatch.setattr(redis.client.Pipeline, "execute", spy(original))
        texts = [f"bulk across the kill {i}" for i in range(BULK_TEXTS)]
        started = time.monotonic()
        task_ids = producers.client.enqueue_ids(texts, app=app, chunk_size=BULK_CHUNK)
        enqueued_s = time.monotonic() - started
        monkeypatch.setattr(redis.client.Pipeline, "execute", original)
        assert len(set(task_ids)) == BULK_TEXTS
        # Bulk publishing was used: 6 transactions of 250 went through, and the refused
        # attempts were whole chunks, never one message per text.
        assert spy.committed == [BULK_CHUNK] * (BULK_TEXTS // BULK_CHUNK)
        assert spy.failed and set(spy.failed) == {BULK_CHUNK}
        vectors = producers.client.wait_all(task_ids, 120, app)
        wrong = [t for t, v in zip(texts, vectors, strict=True) if v != expected(t)]
        assert wrong == []
        stats = stub.stats()
        assert stats["texts_seen"] == len(before) + BULK_TEXTS  # none lost, none missing
        print(f"\nbulk behind Sentinel: {BULK_TEXTS} texts in {len(spy.committed)} transactions "
              f"({len(spy.failed)} refused during the switch) enqueued in {enqueued_s:.1f}s "
              f"across a master kill; lost 0; "
              f"{stats['total_inputs'] - stats['texts_seen']} extra embeddings")  # fmt: skip
        assert worker.alive()

        # enqueue_texts across a second kill. The refused chunk's results were subscribed
        # before its EXEC failed, on the dead master's connection; it is sent again with
        # them marked subscribed, and Celery's reconnect (which re-subscribes subscribed_to
        # and reads what was stored meanwhile) must still let get() hear every result.
        for thread in killer:
            thread.join(90)  # the first kill's cluster has settled: a replica to promote
        spy = TransactionSpy(nth=2, before_nth=kill)
        monkeypatch.setattr(redis.client.Pipeline, "execute", spy(original))
        across = [f"bulk results across the kill {i}" for i in range(3 * BULK_CHUNK)]
        results.extend(producers.enqueue_texts(across, app=app, chunk_size=BULK_CHUNK))
        monkeypatch.setattr(redis.client.Pipeline, "execute", original)
        assert spy.committed == [BULK_CHUNK] * 3
        assert spy.failed and set(spy.failed) == {BULK_CHUNK}
        assert [r.get(timeout=60) for r in results] == [expected(t) for t in across]
        assert stub.stats()["texts_seen"] == len(before) + BULK_TEXTS + len(across)
    finally:
        results.clear()
        gc.collect()
        for thread in killer:
            thread.join(90)
        worker.stop()
