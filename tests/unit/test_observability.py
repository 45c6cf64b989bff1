"""The queue-depth collector and the per-process metrics port, without a real Redis."""

from __future__ import annotations

import logging
import socket

import fakeredis
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from worker.errors import EmbeddingConfigError
from worker.observability import (
    QUEUE_PRIORITY_SEPARATOR,
    QueueDepthCollector,
    metrics_port_for,
    start_metrics_server,
)
from worker.settings import Settings


def _registry(client: redis.Redis) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(client, "embeddings"))
    return registry


def test_queue_depth_sums_every_priority_of_the_queue_and_counts_unacked():
    client = fakeredis.FakeRedis()
    client.rpush("embeddings", *range(5))
    client.rpush(f"embeddings{QUEUE_PRIORITY_SEPARATOR}6", *range(2))
    client.rpush("other-queue", *range(9))
    client.hset("unacked", mapping={"tag1": "m", "tag2": "m", "tag3": "m"})
    registry = _registry(client)
    assert registry.get_sample_value("embeddings_queue_depth", {"queue": "embeddings"}) == 7
    assert registry.get_sample_value("embeddings_queue_unacked") == 3


def test_queue_depth_is_read_again_on_every_scrape():
    client = fakeredis.FakeRedis()
    registry = _registry(client)
    assert registry.get_sample_value("embeddings_queue_depth", {"queue": "embeddings"}) == 0
    client.rpush("embeddings", "a", "b")
    assert registry.get_sample_value("embeddings_queue_depth", {"queue": "embeddings"}) == 2


def test_an_unreachable_broker_leaves_the_gauge_out_instead_of_reporting_zero():
    server = fakeredis.FakeServer()
    server.connected = False
    registry = _registry(fakeredis.FakeRedis(server=server))
    text = generate_latest(registry).decode()
    assert "embeddings_queue_depth{" not in text
    assert registry.get_sample_value("embeddings_queue_depth", {"queue": "embeddings"}) is None


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
            assert (
                start_metrics_server(settings, "redis://127.0.0.1:1/0", "embeddings", port) is False
            )
    assert f"metrics not served on 127.0.0.1:{port}" in caplog.text
