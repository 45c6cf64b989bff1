"""The retry schedule as pure functions, and the tenacity policy built from them."""

from __future__ import annotations

import email.utils
from collections.abc import Callable

import pytest

from worker.embeddings.backoff import backoff_delay, build_retrying
from worker.embeddings.ratelimit_headers import parse_retry_after
from worker.errors import EmbeddingAPIError, EmbeddingServerError

FIXED_NOW = 1_700_000_000.0
SEED = {"initial_s": 1.0, "max_s": 32.0, "jitter_factor": 0.2}


@pytest.mark.parametrize(("retry", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)])
def test_backoff_doubles_from_the_initial_delay_without_jitter(retry: int, expected: float) -> None:
    assert backoff_delay(retry, **SEED, random=lambda: 0.5) == expected


def test_backoff_jitter_stays_within_twenty_percent() -> None:
    low = backoff_delay(1, **SEED, random=lambda: 0.0)
    high = backoff_delay(1, **SEED, random=lambda: 0.999999)
    assert low == pytest.approx(0.8)
    assert high == pytest.approx(1.2, abs=1e-5)
    assert high < 1.2


def test_backoff_is_capped_at_max_backoff() -> None:
    delays = [
        backoff_delay(n, initial_s=1.0, max_s=3.0, jitter_factor=0.2, random=lambda: 0.999999)
        for n in range(1, 8)
    ]
    assert max(delays) <= 3.0
    assert delays[-1] == pytest.approx(3.0, abs=1e-5)


def test_backoff_without_jitter_ignores_the_random_source() -> None:
    assert backoff_delay(3, initial_s=0.5, max_s=32.0, jitter_factor=0.0, random=lambda: 0.0) == 2.0


def test_retry_after_seconds_is_parsed() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0


def test_retry_after_ms_takes_precedence_over_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


def test_retry_after_header_names_are_case_insensitive() -> None:
    assert parse_retry_after({"RETRY-AFTER-MS": "250"}) == 0.25


def test_retry_after_http_date_is_measured_from_the_injected_clock() -> None:
    date = email.utils.formatdate(FIXED_NOW + 3, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=lambda: FIXED_NOW) == 3.0


def test_retry_after_date_in_the_past_means_no_wait() -> None:
    date = email.utils.formatdate(FIXED_NOW - 60, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=lambda: FIXED_NOW) == 0.0


def test_negative_retry_after_means_no_wait() -> None:
    assert parse_retry_after({"Retry-After": "-5"}) == 0.0


def test_bad_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "2"}) == 2.0


@pytest.mark.parametrize("headers", [{}, {"Retry-After": "whenever"}, {"X-Other": "1"}])
def test_absent_or_unparsable_retry_after_gives_none(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers) is None


def _failing(errors: list[Exception], calls: list[int]) -> Callable[[], str]:
    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "ok"

    return fn


def test_build_retrying_waits_the_exact_schedule_then_succeeds() -> None:
    waits: list[float] = []
    calls: list[int] = []
    retrying = build_retrying(max_retries=3, **SEED, sleep=waits.append, random=lambda: 0.5)
    errors: list[Exception] = [EmbeddingServerError("503", 503) for _ in range(3)]
    assert retrying(_failing(errors, calls)) == "ok"
    assert waits == [1.0, 2.0, 4.0]
    assert len(calls) == 4


def test_build_retrying_reraises_the_last_error_after_max_retries() -> None:
    waits: list[float] = []
    calls: list[int] = []
    retrying = build_retrying(max_retries=2, **SEED, sleep=waits.append, random=lambda: 0.5)
    last = EmbeddingServerError("last", 502)
    errors: list[Exception] = [EmbeddingServerError("first", 503), EmbeddingServerError("2nd", 500)]
    errors.append(last)
    with pytest.raises(EmbeddingServerError) as info:
        retrying(_failing(errors, calls))
    assert info.value is last
    assert len(calls) == 3
    assert waits == [1.0, 2.0]


def test_build_retrying_does_not_retry_fatal_errors() -> None:
    waits: list[float] = []
    calls: list[int] = []
    retrying = build_retrying(max_retries=3, **SEED, sleep=waits.append, random=lambda: 0.5)
    with pytest.raises(EmbeddingAPIError):
        retrying(_failing([EmbeddingAPIError("bad", 400)], calls))
    assert len(calls) == 1
    assert waits == []


def test_build_retrying_uses_the_server_hint_capped_at_max_backoff() -> None:
    waits: list[float] = []
    calls: list[int] = []
    retrying = build_retrying(
        max_retries=3, initial_s=1.0, max_s=10.0, jitter_factor=0.2, sleep=waits.append
    )
    hinted = EmbeddingServerError("503", 503)
    hinted.retry_after_s = 3.0
    huge = EmbeddingServerError("503", 503)
    huge.retry_after_s = 86_400.0
    assert retrying(_failing([hinted, huge], calls)) == "ok"
    assert waits == [3.0, 10.0]


def test_build_retrying_honours_a_should_retry_veto() -> None:
    waits: list[float] = []
    calls: list[int] = []
    retrying = build_retrying(max_retries=3, **SEED, sleep=waits.append)
    vetoed = EmbeddingServerError("503", 503)
    vetoed.should_retry = False
    with pytest.raises(EmbeddingServerError):
        retrying(_failing([vetoed], calls))
    assert len(calls) == 1
    assert waits == []


def test_build_retrying_with_zero_retries_makes_one_attempt() -> None:
    calls: list[int] = []
    retrying = build_retrying(max_retries=0, **SEED, sleep=lambda _: None)
    with pytest.raises(EmbeddingServerError):
        retrying(_failing([EmbeddingServerError("503", 503)], calls))
    assert len(calls) == 1
