"""API faults: 429 storms, 5xx storms, hangs past the timeout, and an outage that opens the
circuit breaker. Every text must end SUCCESS with its own vector.

The issue's "outage of a minute" is scaled down with settings so the test stays short: a
6-second outage, a breaker that opens after 2 failed calls and stays open 2 seconds. The
ratio that matters (outage ≫ in-process retries, outage > breaker timeout) is kept.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

import producers
from devstack import free_port, wait_for
from tests.integration.faultkit import outcomes, wait_all_ready

pytestmark = pytest.mark.integration


def _run(app, texts: list[str], timeout_s: float = 60) -> tuple[list, float]:
    started = time.monotonic()
    results = [producers.enqueue_text(text, app=app) for text in texts]
    wait_all_ready(results, timeout_s, f"{len(texts)} texts to finish")
    return results, time.monotonic() - started


def _assert_all_succeeded(results, texts: list[str]) -> None:
    found = outcomes(results, texts)
    assert found["failed"] == [], found["failed"][:3]
    assert found["wrong"] == []
    assert len(found["ok"]) == len(texts)


def test_a_429_storm_with_retry_after_is_waited_out_as_the_server_asks(start_worker, stub, app):
    # max_backoff above the hint, so the 1 s Retry-After is used as given.
    start_worker(
        stub.base_url,
        {"EMBEDDINGS_MAX_BACKOFF_S": "2", "EMBEDDINGS_MAX_RETRIES": "5"},
    )
    stub.add_fault(status=429, count=6, retry_after="1")
    texts = [f"rate limited politely {i}" for i in range(40)]
    results, elapsed_s = _run(app, texts)
    _assert_all_succeeded(results, texts)
    stats = stub.stats()
    assert stats["failed_calls"] == 6
    assert stats["texts_seen"] == len(texts)
    # Six 429s over at most 3 concurrent calls: some call slept a full Retry-After before any
    # success. A lower bound, so it cannot flake on a slow machine.
    assert elapsed_s >= 1.0


def test_a_429_storm_without_retry_after_outlasting_in_process_retries_ends_in_success(
    start_worker, stub, app
):
    # Two in-process retries of ≤0.1 s cannot outlast a 2 s storm: Celery retries must.
    worker = start_worker(
        stub.base_url,
        {"EMBEDDINGS_MAX_RETRIES": "2", "EMBEDDINGS_MAX_BACKOFF_S": "0.1"},
    )
    stub.add_fault(status=429, duration_s=2.0)
    texts = [f"rate limited bluntly {i}" for i in range(40)]
    results, _ = _run(app, texts)
    _assert_all_succeeded(results, texts)
    assert stub.stats()["failed_calls"] >= 3
    assert re.search(r"429 Too Many Requests.*Celery retry", worker.log())


def test_a_5xx_storm_of_every_retryable_status_ends_in_success(start_worker, stub, app):
    start_worker(stub.base_url, {"EMBEDDINGS_MAX_RETRIES": "3"})
    for status in (500, 502, 503, 504):
        stub.add_fault(status=status, count=3)
    texts = [f"server trouble {i}" for i in range(40)]
    results, _ = _run(app, texts)
    _assert_all_succeeded(results, texts)
    stats = stub.stats()
    assert stats["failed_calls"] == 12
    assert stats["texts_seen"] == len(texts)


def test_calls_that_hang_past_the_timeout_are_abandoned_and_retried(start_worker, stub, app):
    worker = start_worker(
        stub.base_url,
        {"EMBEDDINGS_TIMEOUT_S": "0.5", "EMBEDDINGS_MAX_RETRIES": "3"},
    )
    stub.add_fault(hang_s=3.0, count=3)
    texts = [f"hung up on {i}" for i in range(24)]
    results, _ = _run(app, texts)
    _assert_all_succeeded(results, texts)
    assert "the API did not answer within 0.5s" in worker.log()
    assert stub.stats()["texts_seen"] == len(texts)


def _scrape(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return None


def _breaker_gauge(port: int) -> float | None:
    text = _scrape(port)
    match = re.search(r"^embeddings_breaker_state\s+(\S+)$", text or "", re.MULTILINE)
    return float(match.group(1)) if match else None


def test_an_outage_opens_the_breaker_spares_the_api_and_every_text_succeeds_after_it(
    start_worker, stub, app
):
    outage_s, fail_max, reset_s, retries = 6.0, 2, 2.0, 1
    metrics_port = free_port()
    worker = start_worker(
        stub.base_url,
        {
            "EMBEDDINGS_BREAKER_FAIL_MAX": str(fail_max),
            "EMBEDDINGS_BREAKER_RESET_TIMEOUT_S": str(reset_s),
            "EMBEDDINGS_MAX_RETRIES": str(retries),
            "EMBEDDINGS_MAX_BACKOFF_S": "0.1",
            # Enough Celery retries to outlast the outage at about one per reset timeout.
            "EMBEDDINGS_TASK_MAX_RETRIES": "20",
            "EMBEDDINGS_METRICS_PORT": str(metrics_port),
        },
    )
    stub.add_fault(status=503, duration_s=outage_s)
    texts = [f"through the outage {i}" for i in range(60)]
    started = time.monotonic()
    results = [producers.enqueue_text(text, app=app) for text in texts]

    serves_metrics = _scrape(metrics_port) is not None
    if serves_metrics:
        wait_for(lambda: _breaker_gauge(metrics_port) == 1.0, outage_s, "the breaker gauge at 1")
    wait_all_ready(results, outage_s + 60, "every text to outlast the outage")
    _assert_all_succeeded(results, texts)
    assert time.monotonic() - started >= outage_s

    log = worker.log()
    assert "embeddings circuit breaker: closed -> open" in log
    assert re.search(r"circuit breaker open after 2 failed API calls.*Celery retry", log)
    assert "embeddings circuit breaker: half-open -> closed" in log
    # While open, a process makes no calls; each reset timeout lets at most one round of
    # trial calls through (pool_size of them, each with its in-process retries). Without
    # the breaker, three slots retrying every ≤0.1 s would make well over 100 calls.
    pool_size, attempts = 3, retries + 1
    trial_rounds = int(outage_s / reset_s) + 1
    bound = (fail_max + pool_size + trial_rounds * pool_size) * attempts
    failed = stub.stats()["failed_calls"]
    print(f"\noutage {outage_s}s: {failed} failed calls reached the API (bound {bound})")
    assert failed <= bound
    if serves_metrics:
        assert _breaker_gauge(metrics_port) == 0.0
