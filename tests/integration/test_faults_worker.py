"""Worker faults: SIGKILL and SIGTERM mid-run, with texts queued, prefetched and in flight.

Every text must end SUCCESS with its own vector once a replacement worker runs. The stub's
counters show what reached the API: ``texts_seen`` counts distinct texts embedded, and
``total_inputs`` beyond that are duplicates caused by at-least-once redelivery.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from kombu import Connection, Exchange, Queue

import producers
from devstack import wait_for
from tests.integration.faultkit import outcomes, wait_all_ready
from tests.integration.harness import TEST_REDIS_URL, queued_texts
from worker.celery_ext.config import celery_config, with_redis_url
from worker.celery_ext.transport import AtomicFetchChannel
from worker.settings import Settings

TRANSPORT = "worker.celery_ext.transport:AtomicFetchTransport"

pytestmark = pytest.mark.integration

# Small, so a killed worker's unacked texts come back within the test; the sweep runs each
# second (see celeryconfig: unacked_restore_interval × throttle).
VISIBILITY_TIMEOUT_S = 10
RESTORE_INTERVAL_S = 1
# Allowances on top of the visibility timeout, generous because they bound correctness and
# do not benchmark: for the sweep to restore the dead worker's texts (a replacement start and
# a few sweeps), and for every text to be done (the whole queue's calls as well).
RESTORE_MARGIN_S = 10
RECOVERY_MARGIN_S = 30


def _fault_env(visibility_timeout_s: int) -> dict[str, str]:
    return {
        "BROKER_VISIBILITY_TIMEOUT": str(visibility_timeout_s),
        "BROKER_UNACKED_RESTORE_INTERVAL": str(RESTORE_INTERVAL_S),
    }


def _sweep_lock_expiry_s() -> float:
    """The unacked sweep lock's expiry, as kombu reads it in a worker under ``_fault_env``."""
    settings = with_redis_url(Settings.from_env(_fault_env(VISIBILITY_TIMEOUT_S)), TEST_REDIS_URL)
    options = celery_config(settings)["broker_transport_options"]
    with Connection(TEST_REDIS_URL, transport=TRANSPORT, transport_options=options) as conn:
        return float(conn.default_channel.unacked_mutex_expire)


def _enqueue(app, texts: list[str]):
    return [producers.enqueue_text(text, app=app) for text in texts]


def test_a_worker_killed_with_sigkill_mid_run_loses_no_text_once_a_replacement_runs(
    start_worker, stub, app, clean_redis: redis.Redis
):
    # 60 ms per call: the worker is busy with calls in flight, and 2,000 texts still finish.
    stub.set_latency_ms(60)
    texts = [f"sigkill survivor {i}: a text that must not be lost" for i in range(2000)]
    results = _enqueue(app, texts)
    doomed = start_worker(stub.base_url, _fault_env(VISIBILITY_TIMEOUT_S), name="doomed")

    def mid_run() -> bool:
        stats = stub.stats()
        return stats["ok_calls"] >= 10 and stats["current_concurrency"] > 0

    wait_for(mid_run, 60, "the doomed worker to be mid-run with calls in flight")
    doomed.kill()
    killed_at = time.monotonic()
    queued = queued_texts(clean_redis)
    unacked = clean_redis.hlen("unacked")
    in_flight = stub.stats()["current_concurrency"]
    done_before = sum(1 for r in results if r.ready())
    print(
        f"\nSIGKILL: {done_before} done, {unacked} delivered but unacked "
        f"(buffered or in flight), {queued} still queued, {in_flight} calls in flight"
    )
    assert unacked > 0, "nothing was held by the worker when it died"
    assert queued > 0, "nothing was left in the queue when the worker died"
    assert done_before < len(texts)
    # The worst case: the SIGKILL landed mid-sweep, leaving the sweep's lock behind (kombu's
    # Mutex, with the expiry the worker's settings give it). With kombu's default of 300 s,
    # test_lanes' kill test once waited 90 s in CI with 40 texts unacked.
    sweep_lock = clean_redis.lock("unacked_mutex", timeout=_sweep_lock_expiry_s())
    assert sweep_lock.acquire(blocking=False) or clean_redis.exists("unacked_mutex")

    start_worker(stub.base_url, _fault_env(VISIBILITY_TIMEOUT_S), name="replacement")
    # The sweep puts the dead worker's texts back once their visibility timeout has passed.
    wait_for(
        lambda: clean_redis.hlen("unacked") == 0 and clean_redis.zcard("unacked_index") == 0,
        VISIBILITY_TIMEOUT_S + RESTORE_MARGIN_S,
        "the dead worker's unacked texts to be restored",
    )
    restored_s = time.monotonic() - killed_at
    wait_all_ready(
        results,
        VISIBILITY_TIMEOUT_S + RECOVERY_MARGIN_S,
        "every text to finish after the SIGKILL",
    )
    recovered_s = time.monotonic() - killed_at

    found = outcomes(results, texts)
    assert found["failed"] == [] and found["wrong"] == []
    assert len(found["ok"]) == len(texts)
    assert len(clean_redis.keys("celery-task-meta-*")) == len(texts)
    assert clean_redis.hlen("unacked") == 0
    stats = stub.stats()
    assert stats["texts_seen"] == len(texts)
    duplicates = stats["total_inputs"] - len(texts)
    print(
        f"SIGKILL: unacked texts restored {restored_s:.1f}s after the kill, all done after "
        f"{recovered_s:.1f}s; {duplicates} texts embedded twice; lost 0"
    )
    # Only what the dead worker held can be embedded twice.
    assert 0 <= duplicates <= unacked + in_flight * 8


def test_a_warm_shutdown_finishes_calls_in_flight_and_returns_the_rest_to_the_queue(
    start_worker, stub, app, clean_redis: redis.Redis
):
    # 300 ms per call keeps calls in flight when SIGTERM lands. A visibility timeout far
    # beyond the test shows that nothing waits for it: the rest is back in the queue at once.
    stub.set_latency_ms(300)
    texts = [f"sigterm survivor {i}" for i in range(600)]
    results = _enqueue(app, texts)
    first = start_worker(stub.base_url, _fault_env(600), name="leaving")

    def mid_run() -> bool:
        stats = stub.stats()
        return stats["ok_calls"] >= 3 and stats["current_concurrency"] > 0

    wait_for(mid_run, 60, "the leaving worker to be mid-run with calls in flight")
    exit_code = first.stop()  # SIGTERM, then wait for the exit
    assert exit_code == 0, first.log()

    stats = stub.stats()
    assert stats["current_concurrency"] == 0
    assert stats["failed_calls"] == 0, "a call in flight was cut off by the warm shutdown"
    done = [r for r in results if r.ready()]
    assert all(r.state == "SUCCESS" for r in done)
    queued = queued_texts(clean_redis)
    assert clean_redis.hlen("unacked") == 0, "texts were left unacked instead of requeued"
    assert len(done) + queued == len(texts)
    assert stats["total_inputs"] == len(done)
    print(f"\nSIGTERM: {len(done)} finished by the leaving worker, {queued} back in the queue")
    assert queued > 0

    stub.set_latency_ms(20)
    start_worker(stub.base_url, _fault_env(600), name="successor")
    wait_all_ready(results, 60, "the successor to finish the requeued texts")
    found = outcomes(results, texts)
    assert found["failed"] == [] and found["wrong"] == []
    stats = stub.stats()
    assert stats["texts_seen"] == len(texts)
    print(f"SIGTERM: duplicates {stats['total_inputs'] - len(texts)}; lost 0")
    assert stats["total_inputs"] == len(texts), "a warm shutdown should embed nothing twice"


WINDOW_QUEUE = "fault-window-test"


def _publish_one(url: str, transport: str | None) -> None:
    with Connection(url, transport=transport) as conn:
        queue = Queue(WINDOW_QUEUE, Exchange(WINDOW_QUEUE), WINDOW_QUEUE)
        with conn.Producer() as producer:
            producer.publish({"text": "in transit"}, exchange=queue.exchange,
                             routing_key=WINDOW_QUEUE, declare=[queue])  # fmt: skip


def test_stock_kombu_brpop_leaves_a_taken_message_nowhere_until_the_worker_records_it(
    clean_redis: redis.Redis,
):
    # The window the atomic fetch closes: BRPOP has taken the message, the worker has not
    # yet written its unacked copy. A SIGKILL here loses it; nothing could restore it.
    _publish_one(TEST_REDIS_URL, None)
    taken = clean_redis.brpop([WINDOW_QUEUE], timeout=1)
    assert taken is not None
    assert clean_redis.llen(WINDOW_QUEUE) == 0
    assert clean_redis.hlen("unacked") == 0


def test_the_atomic_fetch_takes_a_message_and_records_its_unacked_copy_in_one_step(
    clean_redis: redis.Redis,
):
    _publish_one(TEST_REDIS_URL, TRANSPORT)
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        assert isinstance(channel, AtomicFetchChannel)
        # The consumer "dies" right after the fetch, before any handling or ack.
        fetched = channel._fetch([(WINDOW_QUEUE, True)])
        assert fetched is not None
        key, items = fetched
        assert key == WINDOW_QUEUE and len(items) == 1
        tag = json.loads(items[0])["properties"]["delivery_tag"]
        assert clean_redis.llen(WINDOW_QUEUE) == 0
        assert clean_redis.hexists("unacked", tag)
        assert clean_redis.zscore("unacked_index", tag) is not None
        # The copy is in kombu's own format, so its restore puts the message back.
        channel.qos.restore_by_tag(tag)
    assert clean_redis.llen(WINDOW_QUEUE) == 1
    assert clean_redis.hlen("unacked") == 0


def test_the_atomic_fetch_writes_no_unacked_copy_for_a_queue_consumed_without_acks(
    clean_redis: redis.Redis,
):
    _publish_one(TEST_REDIS_URL, TRANSPORT)
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        assert conn.default_channel._fetch([(WINDOW_QUEUE, False)]) is not None
    assert clean_redis.llen(WINDOW_QUEUE) == 0
    assert clean_redis.hlen("unacked") == 0
    assert clean_redis.zcard("unacked_index") == 0


def test_stock_kombu_cannot_ack_on_a_channel_whose_connection_is_gone(clean_redis: redis.Redis):
    # What a task that was running across a Redis restart does when it finishes; Celery
    # treats the AttributeError as unrecoverable and the worker exits. Named explicitly:
    # worker.celery_ext.install makes the project's transport kombu's "redis".
    conn = Connection(TEST_REDIS_URL, transport="kombu.transport.redis:Transport")
    channel = conn.default_channel
    conn.close()
    with pytest.raises(AttributeError):
        channel.basic_ack("a-tag-of-the-old-connection")


def test_an_ack_on_a_channel_whose_connection_is_gone_is_dropped_for_the_sweep(
    clean_redis: redis.Redis,
):
    conn = Connection(TEST_REDIS_URL, transport=TRANSPORT)
    channel = conn.default_channel
    conn.close()
    channel.basic_ack("a-tag-of-the-old-connection")
    channel.basic_reject("another-tag", requeue=True)
    channel.close()
    assert channel.closed
