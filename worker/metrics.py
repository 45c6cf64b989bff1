"""Prometheus metrics of this process, under the seed's names, and a reader for them.

Prometheus names cannot hold dots, so the seed's ``embeddings.success`` is exported as
``embeddings_success_total``; ``get_counter`` accepts either spelling.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

__all__ = [
    "BATCH_FILL",
    "BREAKER_STATE",
    "BUDGET_PAUSES",
    "BUDGET_UNAVAILABLE",
    "BUDGET_WAIT",
    "CACHE_ERRORS",
    "CACHE_HITS",
    "CACHE_MISSES",
    "FAILURE",
    "INPUTS_SAVED",
    "LANE_WAIT",
    "LATENCY_MS",
    "LATENCY_SECONDS",
    "PENDING_TEXTS",
    "POOL_EXHAUSTED",
    "RATELIMIT_REMAINING",
    "RATE_LIMITED",
    "RETRY",
    "SUCCESS",
    "TEXTS",
    "get_counter",
]

SUCCESS = Counter("embeddings_success", "API calls that succeeded", ["batch_size", "retries"])
# Texts per second and texts per call (÷ embeddings_success_total) on dashboards (deploy/).
TEXTS = Counter("embeddings_texts", "Inputs sent in API calls that succeeded")
FAILURE = Counter("embeddings_failure", "API calls that failed for good", ["error_type", "retries"])
RETRY = Counter("embeddings_retry", "In-process retry attempts", ["attempt", "error_type"])
LATENCY_MS = Histogram(
    "embeddings_latency_ms",
    "Wall time of one API call including its retries, in milliseconds",
    ["batch_size"],
    buckets=(5, 10, 25, 50, 75, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000),
)
# The same observations in seconds, Prometheus's base unit: what dashboards and alerts use
# (deploy/). The milliseconds histogram stays for the seed's API and existing dashboards.
LATENCY_SECONDS = Histogram(
    "embeddings_latency_seconds",
    "Wall time of one API call including its retries, in seconds",
    ["batch_size"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
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

LANE_WAIT = Histogram(
    "embeddings_lane_wait_seconds",
    "Seconds a text waited in this worker process, from its task's start until its call left "
    "(budget wait included), by lane",
    ["lane"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

RATE_LIMITED = Counter("embeddings_rate_limited", "429 answers received from the API")
BUDGET_WAIT = Histogram(
    "embeddings_budget_wait_seconds",
    "Seconds a text waited for the cluster's shared rate-limit budget before its call left",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BUDGET_PAUSES = Counter(
    "embeddings_budget_pauses",
    "Cluster-wide pauses of a model started by this process (a 429, or no budget remaining)",
)
BUDGET_UNAVAILABLE = Counter(
    "embeddings_budget_unavailable", "Budget checks that failed: the budget's Redis was unreachable"
)
RATELIMIT_REMAINING = Gauge(
    "embeddings_ratelimit_remaining",
    "Requests or tokens remaining of the account's limit, as the API last reported them",
    ["kind"],
)

CACHE_HITS = Counter("embeddings_cache_hits", "Texts whose vector the vector cache held")
CACHE_MISSES = Counter("embeddings_cache_misses", "Texts looked up in the vector cache in vain")
CACHE_ERRORS = Counter(
    "embeddings_cache_errors", "Vector cache reads or writes that failed (the text went on)"
)
INPUTS_SAVED = Counter(
    "embeddings_inputs_saved",
    "Texts that cost no API input: served by the cache, merged with an identical text, "
    "revoked before their call, or already stored as SUCCESS",
    ["reason"],
)


def get_counter(name: str, **labels: str) -> float:
    """Current value of a metric, summed over label sets that match ``labels``.

    ``name`` may be the seed's dotted name (``"embeddings.success"``). For a histogram
    (``embeddings.latency_ms``, ``embeddings.latency_seconds``) this is the number of
    observations.
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
