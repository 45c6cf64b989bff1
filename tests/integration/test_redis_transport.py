"""The broker transport reuses one Redis client per channel and still carries messages."""

from __future__ import annotations

import pytest
from kombu import Connection, Exchange, Queue

from tests.integration.harness import TEST_REDIS_URL
from worker.redis_transport import Channel

pytestmark = pytest.mark.integration

TRANSPORT = "worker.redis_transport:Transport"


def test_the_project_app_uses_the_client_reusing_transport(app):
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, Channel)


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
