"""A worker's Prometheus endpoint: the seed's metrics, batch fill and the queue depth."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import producers
from devstack import free_port, wait_for

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[str, float]:
    """Each sample name (with labels folded in by sum) to its value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def test_a_worker_serves_the_seed_metrics_batch_fill_and_queue_depth(start_worker, stub, app):
    port = free_port()
    worker = start_worker(stub.base_url, {"EMBEDDINGS_METRICS_PORT": str(port)}, name="metrics")
    # One 503 first: the in-process retry shows in embeddings_retry_total.
    stub.add_fault(status=503, count=1)
    results = [producers.enqueue_text(f"measured {i}", app=app) for i in range(16)]
    for result in results:
        result.get(timeout=30)

    samples = _scrape(port)
    api = stub.stats()
    assert f"Prometheus metrics on http://0.0.0.0:{port}/metrics" in worker.log()
    assert samples["embeddings_success_total"] == api["ok_calls"]
    assert samples["embeddings_latency_ms_count"] == api["ok_calls"]
    assert samples["embeddings_latency_seconds_count"] == api["ok_calls"]
    assert samples["embeddings_texts_total"] == 16  # sixteen distinct texts, each sent once
    assert 0 < samples["embeddings_latency_seconds_sum"] < samples["embeddings_latency_ms_sum"]
    assert samples["embeddings_retry_total"] >= 1
    assert samples["embeddings_pool_exhausted_total"] == 0
    assert "embeddings_failure_total" not in samples or samples["embeddings_failure_total"] == 0
    assert 0 < samples["embeddings_batch_fill"] <= 1
    assert samples["embeddings_queue_depth"] == 0

    # Stop the worker consuming, so texts pile up in the queue where an autoscaler looks.
    app.control.cancel_consumer("embeddings", destination=[worker.hostname], reply=True)
    waiting = [producers.enqueue_text(f"queued {i}", app=app) for i in range(25)]
    assert _scrape(port)["embeddings_queue_depth"] == 25

    app.control.add_consumer("embeddings", destination=[worker.hostname], reply=True)
    for result in waiting:
        result.get(timeout=30)
    wait_for(lambda: _scrape(port)["embeddings_queue_depth"] == 0, 10, "the queue to drain")
    assert _scrape(port)["embeddings_success_total"] == stub.stats()["ok_calls"]


def test_a_worker_without_a_metrics_port_serves_nothing(start_worker, stub, app):
    port = free_port()
    worker = start_worker(stub.base_url, name="nometrics")
    assert producers.embed_text("no metrics here", timeout=30, app=app)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
    assert "Prometheus metrics on" not in worker.log()
