"""The per-process circuit breaker: when it opens, what counts, and how a task waits for it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.unit.conftest import BASE_URL, error_response, ok_response, vector_for
from worker import metrics
from worker.breaker import EmbeddingBreaker, counts_as_failure
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.errors import (
    EmbeddingAPIError,
    EmbeddingCircuitOpenError,
    EmbeddingInputError,
    EmbeddingPoolExhausted,
    EmbeddingResponseError,
    EmbeddingServerError,
    EmbeddingTimeoutError,
)
from worker.settings import Settings
from worker.tasks import circuit_open_countdown_s, retry_countdown_s


class GaugeRecorder:
    """Stands in for the Prometheus gauge and remembers every value set."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, value: float) -> None:
        self.values.append(value)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedAPI:
    """Answers each call with the next status of ``script`` (200 once it runs out)."""

    def __init__(self, *script: int) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            return ok_response(request)
        return error_response(status, f"scripted {status}")


@pytest.fixture
def gauge() -> GaugeRecorder:
    return GaugeRecorder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(gauge: GaugeRecorder, clock: Clock) -> EmbeddingBreaker:
    return EmbeddingBreaker(3, 30.0, gauge=gauge, clock=clock)  # type: ignore[arg-type]


@pytest.fixture
def guarded(
    breaker: EmbeddingBreaker, waits: list[float]
) -> Iterator[Callable[..., EmbeddingBatcher]]:
    """An ``EmbeddingBatcher`` over ``MockTransport(handler)`` whose client uses ``breaker``."""
    made: list[EmbeddingBatcher] = []

    def make(handler: Callable[[httpx.Request], httpx.Response], **config: Any) -> EmbeddingBatcher:
        config.setdefault("max_retries", 0)
        batcher = EmbeddingBatcher(
            EmbeddingConfig(base_url=BASE_URL, api_key="sk-test", model="test-model", **config),
            transport=httpx.MockTransport(handler),
            sleep=waits.append,
            random=lambda: 0.5,
            breaker=breaker,
        )
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


@pytest.fixture
def client_with(guarded: Callable[..., EmbeddingBatcher]) -> Callable[..., Any]:
    """An ``EmbeddingClient`` over ``handler``, one attempt per call, guarded by ``breaker``."""

    def make(handler: Callable[[httpx.Request], httpx.Response]) -> Any:
        return guarded(handler).client

    return make


def test_the_breaker_opens_after_fail_max_failed_calls_in_a_row_and_spares_the_api(
    client_with, breaker, gauge
):
    api = ScriptedAPI(503, 503, 503)
    client = client_with(api)
    for _ in range(3):
        with pytest.raises(EmbeddingServerError):
            client.embed(["a"])
    assert breaker.state == "open"
    with pytest.raises(EmbeddingCircuitOpenError) as info:
        client.embed(["a"])
    assert api.calls == 3, "an open breaker must not touch the API"
    assert "circuit breaker open after 3 failed API calls" in str(info.value)
    assert gauge.values[-1] == 1


def test_the_trip_raises_the_apis_own_error_not_the_libraries(client_with):
    client = client_with(ScriptedAPI(503, 503, 503))
    errors = []
    for _ in range(3):
        with pytest.raises(EmbeddingServerError) as info:
            client.embed(["a"])
        errors.append(info.value)
    assert errors[-1].status_code == 503
    assert "scripted 503" in str(errors[-1])


def test_a_success_resets_the_count_of_failures(client_with, breaker):
    api = ScriptedAPI(503, 503, 200, 503, 503)
    client = client_with(api)
    outcomes = []
    for _ in range(5):
        try:
            client.embed(["a"])
            outcomes.append("ok")
        except EmbeddingServerError:
            outcomes.append("503")
    assert outcomes == ["503", "503", "ok", "503", "503"]
    assert breaker.state == "closed"
    assert breaker.fail_counter == 2


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_a_4xx_rejection_is_the_api_answering_and_never_opens_the_breaker(
    client_with, breaker, status
):
    api = ScriptedAPI(*[status] * 10)
    client = client_with(api)
    for _ in range(10):
        with pytest.raises(EmbeddingAPIError):
            client.embed(["a"])
    assert breaker.state == "closed"
    assert api.calls == 10


def test_a_rejection_between_failures_resets_the_count(client_with, breaker):
    client = client_with(ScriptedAPI(503, 503, 400, 503, 503))
    for _ in range(5):
        with pytest.raises((EmbeddingServerError, EmbeddingAPIError)):
            client.embed(["a"])
    assert breaker.state == "closed"


def test_a_failure_means_a_call_whose_in_process_retries_were_all_spent(guarded, breaker, waits):
    # Two retries per call: three 503s are one failed call, and a 200 on the third try is none.
    api = ScriptedAPI(503, 503, 200, 503, 503, 503)
    client = guarded(api, max_retries=2).client
    assert client.embed(["a"]).retries == 2
    assert breaker.fail_counter == 0
    with pytest.raises(EmbeddingServerError):
        client.embed(["a"])
    assert breaker.fail_counter == 1
    assert len(waits) == 4


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (EmbeddingServerError("5xx"), True),
        (EmbeddingTimeoutError("slow"), True),
        (EmbeddingPoolExhausted("busy"), True),
        (EmbeddingCircuitOpenError("ours"), False),
        (EmbeddingAPIError("400", 400), False),
        (EmbeddingResponseError("bad json"), False),
        (EmbeddingInputError("empty"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_only_transient_api_errors_count_as_failures(error, counts):
    assert counts_as_failure(error) is counts


def test_an_open_error_says_how_long_the_breaker_stays_open(client_with, breaker, clock):
    client = client_with(ScriptedAPI(503, 503, 503))
    for _ in range(3):
        with pytest.raises(EmbeddingServerError):
            client.embed(["a"])
    clock.now += 12.5
    with pytest.raises(EmbeddingCircuitOpenError) as info:
        client.embed(["a"])
    assert info.value.retry_after_s == pytest.approx(17.5)
    assert breaker.remaining_open_s() == pytest.approx(17.5)
    clock.now += 100
    assert breaker.remaining_open_s() == 0.0


def test_after_the_reset_timeout_a_successful_trial_call_closes_the_breaker(
    client_with, breaker, gauge
):
    api = ScriptedAPI(503, 503, 503)
    client = client_with(api)
    for _ in range(3):
        with pytest.raises(EmbeddingServerError):
            client.embed(["a"])
    breaker.reset_timeout_s = 0.0  # the timeout has elapsed
    assert client.embed(["trial"]).embeddings == [vector_for("trial")]
    assert breaker.state == "closed"
    assert breaker.remaining_open_s() == 0.0
    # closed at start, open, half-open for the trial, closed again
    assert gauge.values == [0, 1, 2, 0]


def test_a_failed_trial_call_opens_the_breaker_again(client_with, breaker, gauge):
    api = ScriptedAPI(503, 503, 503, 503)
    client = client_with(api)
    for _ in range(3):
        with pytest.raises(EmbeddingServerError):
            client.embed(["a"])
    breaker.reset_timeout_s = 0.0
    with pytest.raises(EmbeddingServerError):
        client.embed(["trial"])
    breaker.reset_timeout_s = 30.0
    assert breaker.state == "open"
    with pytest.raises(EmbeddingCircuitOpenError):
        client.embed(["refused"])
    assert api.calls == 4
    assert gauge.values == [0, 1, 2, 1]


def test_calls_through_the_breaker_still_run_concurrently(guarded):
    # pybreaker's CircuitBreaker.call holds a lock around the call; three calls that each
    # wait for the other two would deadlock (and the barrier would break) if serialised.
    barrier = threading.Barrier(3, timeout=5)

    def handler(request: httpx.Request) -> httpx.Response:
        barrier.wait()
        return ok_response(request)

    client = guarded(handler, pool_size=3).client
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(client.embed([f"t{i}"])))
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 3
    assert not barrier.broken


def test_an_open_breaker_fails_each_text_of_an_isolated_call_with_the_open_error(guarded):
    api = ScriptedAPI(503, 503, 503)
    batcher = guarded(api)
    for _ in range(3):
        batcher.embed_isolated(["x"])
    outcomes = batcher.embed_isolated(["a", "b", "c"])
    assert all(isinstance(o, EmbeddingCircuitOpenError) for o in outcomes)
    assert all(o.retry_after_s == pytest.approx(30.0) for o in outcomes)
    assert api.calls == 3


def test_without_a_breaker_the_batcher_keeps_calling_a_failing_api(make_batcher):
    api = ScriptedAPI(*[503] * 10)
    batcher = make_batcher(api, max_retries=0)
    for _ in range(10):
        with pytest.raises(EmbeddingServerError):
            batcher.embed_batch(["a"])
    assert api.calls == 10
    assert batcher.client.breaker is None


def test_the_breaker_state_reaches_the_prometheus_gauge():
    shared = EmbeddingBreaker(1, 30.0)
    try:
        assert metrics.get_counter("embeddings.breaker_state") == 0
        with pytest.raises(EmbeddingServerError):
            shared.call(_raise, EmbeddingServerError("down", 503))
        assert metrics.get_counter("embeddings.breaker_state") == 1
    finally:
        metrics.BREAKER_STATE.set(0)


def test_the_breaker_reads_its_thresholds_from_settings():
    settings = Settings(breaker_fail_max=7, breaker_reset_timeout_s=12.0)
    built = EmbeddingBreaker.from_settings(settings)
    assert (built.fail_max, built.reset_timeout_s, built.state) == (7, 12.0, "closed")


def test_a_task_refused_by_an_open_breaker_waits_at_least_until_it_half_opens():
    settings = Settings(task_retry_backoff_s=2.0, task_retry_backoff_max_s=60.0)
    refused = EmbeddingCircuitOpenError("open")
    refused.retry_after_s = 25.0
    for random_ in (0.0, 0.5, 0.999):
        countdown = circuit_open_countdown_s(refused, 0, settings, random_)
        assert 25.0 + 2.0 * random_ <= countdown <= 25.0 + 2.0
    # Late in the retry schedule the normal backoff is longer and wins.
    assert circuit_open_countdown_s(refused, 6, settings, 0.5) == retry_countdown_s(
        6, settings, 0.5
    )


def test_other_transient_errors_keep_the_normal_retry_countdown():
    settings = Settings()
    error = EmbeddingServerError("503", 503)
    error.retry_after_s = 500.0
    assert circuit_open_countdown_s(error, 2, settings, 0.3) == retry_countdown_s(2, settings, 0.3)


def _raise(exc: BaseException) -> None:
    raise exc


def test_a_celery_retry_never_waits_less_than_the_floor():
    from worker.tasks import MIN_RETRY_COUNTDOWN_S

    settings = Settings(task_retry_backoff_s=0.1, task_retry_backoff_max_s=60.0)
    assert retry_countdown_s(0, settings, 0.0) == MIN_RETRY_COUNTDOWN_S
    assert retry_countdown_s(6, settings, 0.5) == pytest.approx(6.4)


@pytest.mark.parametrize("retries", [0, 1, 3, 6, 10])
@pytest.mark.parametrize("random_", [0.0, 0.25, 0.999])
def test_a_celery_retry_countdown_is_the_in_process_backoff_over_the_task_settings(
    retries: int, random_: float
) -> None:
    from worker.embeddings.backoff import backoff_delay
    from worker.tasks import MIN_RETRY_COUNTDOWN_S

    settings = Settings(task_retry_backoff_s=2.0, task_retry_backoff_max_s=60.0)
    expected = backoff_delay(
        retries + 1, initial_s=2.0, max_s=60.0, jitter_factor=0.2, random=lambda: random_
    )
    assert retry_countdown_s(retries, settings, random_) == max(MIN_RETRY_COUNTDOWN_S, expected)
    assert retry_countdown_s(retries, settings, random_) <= 60.0


def test_only_real_transitions_are_logged_at_warning(client_with, breaker, caplog):
    # Two trial calls in flight when the breaker half-opens both succeed; pybreaker closes
    # it once per success, so the second tells the listener "closed -> closed".
    api = ScriptedAPI(503, 503, 503)
    client = client_with(api)
    for _ in range(3):
        with pytest.raises(EmbeddingServerError):
            client.embed(["a"])
    breaker.reset_timeout_s = 0.0
    both_in_flight = threading.Barrier(2, timeout=5)
    api_answer = api.__call__

    def handler(request: httpx.Request) -> httpx.Response:
        both_in_flight.wait()
        return api_answer(request)

    trial_client = client_with(handler)
    caplog.set_level(logging.DEBUG, logger="worker.breaker")
    caplog.clear()
    threads = [threading.Thread(target=trial_client.embed, args=([f"t{i}"],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert breaker.state == "closed"
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "worker.breaker"]
    warnings = [message for level, message in said if level == logging.WARNING]
    assert warnings == [
        "embeddings circuit breaker: open -> half-open",
        "embeddings circuit breaker: half-open -> closed",
    ]
    assert (logging.DEBUG, "embeddings circuit breaker: still closed") in said
