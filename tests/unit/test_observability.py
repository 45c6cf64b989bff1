"""The queue-depth collector and the per-process metrics port, without a real Redis.

The keys are the project's transport's (``BrokerKeys.of``);
tests/integration/test_queue_depth_keys.py checks them against messages kombu wrote.
"""

from __future__ import annotations

import logging
import socket

import fakeredis
import pytest
import redis
from celery import Celery
from kombu import Connection
from prometheus_client import CollectorRegistry, generate_latest

from worker.celery_ext.transport import AtomicFetchTransport
from worker.errors import EmbeddingConfigError
from worker.names import BULK_QUEUE, INTERACTIVE_QUEUE, LANE_BULK, LANE_INTERACTIVE
from worker.observability import (
    BrokerKeys,
    QueueDepthCollector,
    metrics_port_for,
    start_metrics_server,
)
from worker.settings import Settings

INTERACTIVE = {"queue": INTERACTIVE_QUEUE, "lane": LANE_INTERACTIVE}
BULK = {"queue": BULK_QUEUE, "lane": LANE_BULK}


def _keys() -> BrokerKeys:
    keys = BrokerKeys.of(Connection("redis://", transport=AtomicFetchTransport).transport)
    assert keys is not None
    return keys


KEYS = _keys()


def _priority_list(lane: str, step: int) -> str:
    """The list of ``lane``'s queue holding its ``step``-th priority (0: the queue itself)."""
    return KEYS.lanes[lane][1][step]


def _registry(client: redis.Redis) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(client, KEYS))
    return registry


def test_a_transport_that_cannot_name_its_keys_gives_no_keys():
    # kombu's stock Redis transport: the gauge is left out rather than guessing keys.
    from kombu.transport.redis import Transport as StockRedisTransport

    assert BrokerKeys.of(Connection("redis://", transport=StockRedisTransport).transport) is None
    assert KEYS.lanes[LANE_BULK][1][0] == BULK_QUEUE
    assert len(set(KEYS.lanes[LANE_BULK][1])) > 1


class _CountingRedis(fakeredis.FakeRedis):
    """A fake Redis that counts round trips: commands sent alone, and pipelines executed."""

    def __init__(self) -> None:
        super().__init__()
        self.round_trips = 0

    def execute_command(self, *args, **options):
        self.round_trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(raise_on_error=True):
            self.round_trips += 1
            return execute(raise_on_error)

        pipe.execute = counted
        return pipe


def test_queue_depth_sums_every_priority_of_the_queue_and_counts_unacked():
    client = fakeredis.FakeRedis()
    client.rpush(BULK_QUEUE, *range(5))
    client.rpush(_priority_list(LANE_BULK, 2), *range(2))
    client.rpush("other-queue", *range(9))
    client.hset(KEYS.unacked, mapping={"tag1": "m", "tag2": "m", "tag3": "m"})
    registry = _registry(client)
    assert registry.get_sample_value("embeddings_queue_depth", BULK) == 7
    assert registry.get_sample_value("embeddings_queue_unacked") == 3


def test_queue_depth_is_reported_for_each_lane_with_its_queue_and_lane_labels():
    client = fakeredis.FakeRedis()
    client.rpush(INTERACTIVE_QUEUE, *range(3))
    client.rpush(_priority_list(LANE_INTERACTIVE, -1), "urgent")
    client.rpush(BULK_QUEUE, *range(40))
    registry = _registry(client)
    assert registry.get_sample_value("embeddings_queue_depth", INTERACTIVE) == 4
    assert registry.get_sample_value("embeddings_queue_depth", BULK) == 40
    samples = [
        s for m in registry.collect() for s in m.samples if s.name == "embeddings_queue_depth"
    ]
    # Exactly the two lanes: a sum over the metric is the whole backlog, counted once.
    assert sorted(s.labels["lane"] for s in samples) == [LANE_BULK, LANE_INTERACTIVE]
    assert sum(s.value for s in samples) == 44


def test_an_empty_lane_reports_zero_rather_than_being_left_out():
    client = fakeredis.FakeRedis()
    client.rpush(BULK_QUEUE, "a backfill")
    registry = _registry(client)
    # An absent series would look like a broker outage (EmbeddingsQueueDepthUnknown).
    assert registry.get_sample_value("embeddings_queue_depth", INTERACTIVE) == 0
    assert registry.get_sample_value("embeddings_queue_depth", BULK) == 1


def test_both_lanes_and_unacked_are_read_in_one_round_trip():
    client = _CountingRedis()
    client.rpush(INTERACTIVE_QUEUE, "a")
    client.round_trips = 0
    text = generate_latest(_registry(client)).decode()
    assert 'lane="interactive"' in text and 'lane="bulk"' in text
    assert client.round_trips == 1


def test_queue_depth_is_read_again_on_every_scrape():
    client = fakeredis.FakeRedis()
    registry = _registry(client)
    assert registry.get_sample_value("embeddings_queue_depth", INTERACTIVE) == 0
    client.rpush(INTERACTIVE_QUEUE, "a", "b")
    assert registry.get_sample_value("embeddings_queue_depth", INTERACTIVE) == 2


def test_an_unreachable_broker_leaves_the_gauge_out_instead_of_reporting_zero():
    server = fakeredis.FakeServer()
    server.connected = False
    registry = _registry(fakeredis.FakeRedis(server=server))
    text = generate_latest(registry).decode()
    assert "embeddings_queue_depth{" not in text
    assert "embeddings_queue_unacked " not in text
    assert registry.get_sample_value("embeddings_queue_depth", INTERACTIVE) is None
    assert registry.get_sample_value("embeddings_queue_depth", BULK) is None


def test_a_prefork_child_serves_on_the_base_port_plus_its_index():
    assert metrics_port_for(9100, None) == 9100
    assert metrics_port_for(9100, 0) == 9100
    assert metrics_port_for(9100, 3) == 9103


def test_a_metrics_port_out_of_range_is_refused_at_start_up():
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_METRICS_PORT"):
        Settings.from_env(environ={"EMBEDDINGS_METRICS_PORT": "70000"})


def test_a_taken_metrics_port_is_logged_and_never_stops_the_worker(caplog):
    settings = Settings(metrics_port=1, metrics_addr="127.0.0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="worker.observability"):
            app = Celery("metrics-port-test", broker="redis://127.0.0.1:1/0", set_as_current=False)
            assert start_metrics_server(settings, app, port) is False
    assert f"metrics not served on 127.0.0.1:{port}" in caplog.text
