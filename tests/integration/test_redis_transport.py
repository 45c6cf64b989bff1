"""The broker transport reuses one Redis client per channel and still carries messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from tests.integration.harness import TEST_REDIS_URL
from worker.celery_ext.transport import MAX_FETCH, AtomicFetchChannel

pytestmark = pytest.mark.integration

TRANSPORT = "worker.celery_ext.transport:AtomicFetchTransport"


def test_the_project_app_uses_the_client_reusing_transport(app):
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, AtomicFetchChannel)


def test_a_channel_builds_one_sync_client_and_a_new_one_for_a_new_pool(clean_redis):
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        assert channel._create_client(asynchronous=True) is not first
        channel._disconnect_pools()
        replaced = channel._create_client()
        assert replaced is not first
        assert replaced.connection_pool is channel.pool


def test_messages_published_and_acked_through_the_cached_client_leave_nothing_behind(clean_redis):
    queue = Queue("transport-test", Exchange("transport-test"), "transport-test")
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        with conn.Producer() as producer:
            for i in range(3):
                producer.publish({"n": i}, exchange=queue.exchange,
                                 routing_key="transport-test", declare=[queue])  # fmt: skip
        bound = queue(conn.default_channel)
        received = []
        for _ in range(3):
            message = bound.get(no_ack=False)
            assert message is not None
            received.append(message.payload["n"])
            message.ack()
    assert received == [0, 1, 2]
    assert clean_redis.llen("transport-test") == 0
    assert clean_redis.hlen("unacked") == 0


def test_a_consumed_message_is_recorded_unacked_once_by_the_fetch_script(clean_redis, monkeypatch):
    from kombu.transport import redis as kombu_redis

    writes = []
    original = kombu_redis.QoS.append
    monkeypatch.setattr(
        kombu_redis.QoS, "append", lambda self, m, tag: (writes.append(tag), original(self, m, tag))
    )
    queue = Queue("fetch-test", Exchange("fetch-test"), "fetch-test")
    received = []
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        with conn.Producer() as producer:
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key="fetch-test",
                             declare=[queue])  # fmt: skip
        with conn.Consumer(queue, callbacks=[lambda body, msg: received.append(msg)]):
            conn.drain_events(timeout=5)
            assert clean_redis.hlen("unacked") == 1  # the script's copy, before the ack
            assert clean_redis.zcard("unacked_index") == 1
            received[0].ack()
    assert writes == []  # kombu's own (duplicate) unacked write was skipped
    assert clean_redis.hlen("unacked") == 0
    assert clean_redis.llen("fetch-test") == 0


def _publish(conn: Connection, queue: Queue, bodies: list[object]) -> None:
    with conn.Producer() as producer:
        for body in bodies:
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                             declare=[queue])  # fmt: skip


def test_one_fetch_takes_several_messages_but_never_more_than_the_prefetch_window(clean_redis):
    queue = Queue("batch-fetch", Exchange("batch-fetch"), "batch-fetch")
    received: list[Any] = []
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        _publish(conn, queue, [{"n": i} for i in range(3 * MAX_FETCH)])
        with conn.Consumer(queue, callbacks=[lambda body, msg: received.append(msg)]) as consumer:
            consumer.qos(prefetch_count=5)
            conn.drain_events(timeout=5)
            # One fetch: the whole window at once, each with its unacked copy.
            assert len(received) == 5
            assert clean_redis.hlen("unacked") == 5
            assert clean_redis.llen("batch-fetch") == 3 * MAX_FETCH - 5
            for message in received:
                message.ack()
            consumer.qos(prefetch_count=0)  # no window: MAX_FETCH at most
            conn.drain_events(timeout=5)
            assert len(received) == 5 + MAX_FETCH
            for message in received[5:]:
                message.ack()
    assert [m.payload["n"] for m in received] == list(range(5 + MAX_FETCH))
    assert clean_redis.hlen("unacked") == 0


def test_an_undecodable_message_does_not_strand_the_ones_fetched_with_it(clean_redis):
    queue = Queue("bad-fetch", Exchange("bad-fetch"), "bad-fetch")
    received: list[Any] = []
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        _publish(conn, queue, [{"n": 0}])
        clean_redis.lpush("bad-fetch", b"\xff not json")
        _publish(conn, queue, [{"n": 2}])
        with conn.Consumer(queue, callbacks=[lambda body, msg: received.append(msg)]):
            with pytest.raises(ValueError):
                conn.drain_events(timeout=5)
            assert [m.payload["n"] for m in received] == [0, 2]
            for message in received:
                message.ack()
    assert clean_redis.llen("bad-fetch") == 0
    assert clean_redis.hlen("unacked") == 0


def test_in_an_event_loop_acks_free_their_slot_at_once_and_reach_redis_in_one_batch(clean_redis):
    queue = Queue("ack-batch", Exchange("ack-batch"), "ack-batch")
    received: list[Any] = []
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        _publish(conn, queue, [{"n": i} for i in range(3)])
        conn.transport.acks_batched = True  # what register_with_event_loop sets
        with conn.Consumer(queue, callbacks=[lambda body, msg: received.append(msg)]) as consumer:
            consumer.qos(prefetch_count=3)
            conn.drain_events(timeout=5)
            channel = conn.default_channel
            assert len(received) == 3 and not channel.qos.can_consume()
            for message in received:
                message.ack()
            assert channel.qos.can_consume()  # the prefetch window reopened
            assert clean_redis.hlen("unacked") == 3  # not written yet
            channel.flush_acks()
            assert clean_redis.hlen("unacked") == 0
            assert clean_redis.zcard("unacked_index") == 0


def test_closing_a_channel_writes_its_batched_acks_before_restoring_the_rest(clean_redis):
    queue = Queue("ack-close", Exchange("ack-close"), "ack-close")
    received: list[Any] = []
    with Connection(TEST_REDIS_URL, transport=TRANSPORT) as conn:
        _publish(conn, queue, [{"n": i} for i in range(2)])
        conn.transport.acks_batched = True
        with conn.Consumer(queue, callbacks=[lambda body, msg: received.append(msg)]):
            conn.drain_events(timeout=5)
            assert len(received) == 2
            received[0].ack()  # acked but not yet written; the other is left unacked
    # The acked text is gone for good; the unacked one went back to the queue.
    assert clean_redis.hlen("unacked") == 0
    (left,) = clean_redis.lrange("ack-close", 0, -1)
    assert json.loads(left)["properties"]["delivery_tag"] == received[1].delivery_tag
