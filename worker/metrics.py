"""Prometheus metrics of this process, under the seed's names, and a reader for them.

Prometheus names cannot hold dots, so the seed's ``embeddings.success`` is exported as
``embeddings_success_total``; ``get_counter`` accepts either spelling.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

__all__ = [
    "BATCH_FILL",
    "BREAKER_STATE",
    "FAILURE",
    "LATENCY_MS",
    "PENDING_TEXTS",
    "POOL_EXHAUSTED",
    "RETRY",
    "SUCCESS",
    "get_counter",
]

SUCCESS = Counter("embeddings_success", "API calls that succeeded", ["batch_size", "retries"])
FAILURE = Counter("embeddings_failure", "API calls that failed for good", ["error_type", "retries"])
RETRY = Counter("embeddings_retry", "In-process retry attempts", ["attempt", "error_type"])
LATENCY_MS = Histogram(
    "embeddings_latency_ms",
    "Wall time of one API call including its retries, in milliseconds",
    ["batch_size"],
    buckets=(5, 10, 25, 50, 75, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000),
)
POOL_EXHAUSTED = Counter(
    "embeddings_pool_exhausted", "Calls that found no free pooled connection in time"
)
BATCH_FILL = Gauge(
    "embeddings_batch_fill", "Texts in the last call divided by batch_size (1.0 is a full call)"
)
PENDING_TEXTS = Gauge(
    "embeddings_pending_texts", "Texts waiting in this process's micro-batcher for a call"
)
BREAKER_STATE = Gauge(
    "embeddings_breaker_state", "This process's circuit breaker: 0 closed, 1 open, 2 half-open"
)


def get_counter(name: str, **labels: str) -> float:
    """Current value of a metric, summed over label sets that match ``labels``.

    ``name`` may be the seed's dotted name (``"embeddings.success"``). For
    ``embeddings.latency_ms`` this is the number of observations.
    """
    base = name.replace(".", "_")
    wanted = {base, base + "_total", base + "_count"}
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name in wanted and all(
                sample.labels.get(k) == str(v) for k, v in labels.items()
            ):
                total += sample.value
    return total
