"""A worker's Prometheus endpoint: the seed's metrics, batch fill and each lane's queue depth."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import producers
from devstack import free_port, wait_for
from worker.names import BULK_QUEUE, EMBED_TEXT_TASK, INTERACTIVE_QUEUE, LANE_QUEUES

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[str, float]:
    """Each sample name (with labels folded in by sum) to its value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def _depths(port: int) -> dict[str, float]:
    """``embeddings_queue_depth`` by lane, checking each lane's ``queue`` label on the way."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    depths: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "embeddings_queue_depth":
                assert sample.labels["queue"] == LANE_QUEUES[sample.labels["lane"]]
                depths[sample.labels["lane"]] = sample.value
    return depths


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

    assert _depths(port) == {"interactive": 0, "bulk": 0}

    # Stop the worker consuming either lane, so texts pile up where an autoscaler looks.
    for queue in (INTERACTIVE_QUEUE, BULK_QUEUE):
        app.control.cancel_consumer(queue, destination=[worker.hostname], reply=True)
    waiting = [producers.enqueue_text(f"queued {i}", app=app) for i in range(25)]
    # A backfill's texts, sent to the bulk queue by name as any producer may.
    waiting += [
        app.send_task(EMBED_TEXT_TASK, args=(f"backfill {i}",), queue=BULK_QUEUE) for i in range(7)
    ]
    assert _depths(port) == {"interactive": 25, "bulk": 7}
    assert _scrape(port)["embeddings_queue_depth"] == 32  # the sum over lanes is the backlog

    for queue in (INTERACTIVE_QUEUE, BULK_QUEUE):
        app.control.add_consumer(queue, destination=[worker.hostname], reply=True)
    for result in waiting:
        result.get(timeout=30)
    wait_for(lambda: _scrape(port)["embeddings_queue_depth"] == 0, 10, "the queues to drain")
    assert _scrape(port)["embeddings_success_total"] == stub.stats()["ok_calls"]


def test_a_worker_without_a_metrics_port_serves_nothing(start_worker, stub, app):
    port = free_port()
    worker = start_worker(stub.base_url, name="nometrics")
    assert producers.embed_text("no metrics here", timeout=30, app=app)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
    assert "Prometheus metrics on" not in worker.log()
