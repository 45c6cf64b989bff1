"""The queue gauges read the keys kombu really writes: messages of every priority, and unacked.

kombu's key formats live in the Celery layer (``AtomicFetchTransport.queue_keys`` and
``unacked_key``); ``worker.observability`` asks the app's transport for them. Here kombu
itself publishes and delivers, so a change in its formats fails this test.
"""

from __future__ import annotations

import redis
from kombu import Connection, Exchange, Queue
from prometheus_client import CollectorRegistry

from tests.integration.harness import TEST_REDIS_URL
from worker.celery_ext.transport import AtomicFetchTransport
from worker.names import BULK_QUEUE, LANE_BULK
from worker.observability import BrokerKeys, QueueDepthCollector

BULK = {"queue": BULK_QUEUE, "lane": LANE_BULK}


def test_the_gauges_count_what_kombu_published_at_every_priority_and_left_unacked(
    clean_redis: redis.Redis,
) -> None:
    queue = Queue(BULK_QUEUE, Exchange(BULK_QUEUE, type="direct"), routing_key=BULK_QUEUE)
    with Connection(TEST_REDIS_URL, transport=AtomicFetchTransport) as connection:
        keys = BrokerKeys.of(connection.transport)
        assert keys is not None
        producer = connection.Producer()
        for priority in (0, 0, 3, 6, 9):
            producer.publish(
                {"n": priority}, exchange=queue.exchange, routing_key=BULK_QUEUE,
                declare=[queue], priority=priority, serializer="json",
            )  # fmt: skip
        registry = CollectorRegistry()
        registry.register(QueueDepthCollector(clean_redis, keys))
        assert registry.get_sample_value("embeddings_queue_depth", BULK) == 5
        assert registry.get_sample_value("embeddings_queue_unacked") == 0
        # Delivered and not acknowledged: kombu keeps its copy in the unacked hash.
        message = queue(connection.default_channel).get(no_ack=False)
        assert message is not None
        assert registry.get_sample_value("embeddings_queue_depth", BULK) == 4
        assert registry.get_sample_value("embeddings_queue_unacked") == 1
        message.ack()
