"""Every rate-limit hint format an API sends, and ignoring garbage."""

from __future__ import annotations

import pytest

from worker.embeddings.ratelimit_headers import (
    RateLimitHeaders,
    parse_duration_s,
    parse_rate_limit_headers,
    retry_hint_s,
)

FIXED_NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("2m30.5s", 150.5),
        ("1h2m3s", 3723.0),
        ("0s", 0.0),
        ("250us", 0.00025),
        ("2.812", 2.812),  # a bare number is seconds, as compatible servers write it
    ],
)
def test_durations_in_openais_formats_are_read_as_seconds(raw: str, seconds: float) -> None:
    assert parse_duration_s(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "soon", "1x", "s", "-1s", "1s garbage", "ms20", "-3", "1e99"])
def test_garbage_durations_are_ignored(raw: str) -> None:
    assert parse_duration_s(raw) is None


def test_every_x_ratelimit_header_is_read_case_insensitively() -> None:
    headers = {
        "X-RateLimit-Limit-Requests": "3000",
        "x-ratelimit-limit-tokens": "1000000",
        "x-ratelimit-remaining-requests": "2999",
        "x-ratelimit-remaining-tokens": "999990",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_rate_limit_headers(headers) == RateLimitHeaders(
        limit_requests=3000,
        limit_tokens=1_000_000,
        remaining_requests=2999,
        remaining_tokens=999_990,
        reset_requests_s=0.02,
        reset_tokens_s=360.0,
    )


def test_unparsable_x_ratelimit_values_are_left_out_and_the_rest_kept() -> None:
    headers = {
        "x-ratelimit-limit-requests": "lots",
        "x-ratelimit-remaining-requests": "-4",
        "x-ratelimit-reset-requests": "whenever",
        "x-ratelimit-remaining-tokens": "12",
    }
    assert parse_rate_limit_headers(headers) == RateLimitHeaders(remaining_tokens=12)


def test_a_response_without_rate_limit_headers_reads_as_empty() -> None:
    limits = parse_rate_limit_headers({"content-type": "application/json"})
    assert limits.is_empty()
    assert not parse_rate_limit_headers({"x-ratelimit-limit-requests": "5"}).is_empty()


def test_retry_after_ms_is_the_first_hint() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "9", "x-ratelimit-reset-requests": "7s"}
    assert retry_hint_s(headers, "Please try again in 4s.") == 1.5


def test_retry_after_seconds_comes_next() -> None:
    assert retry_hint_s({"Retry-After": "3"}, "Please try again in 4s.") == 3.0


def test_retry_after_as_an_http_date_is_measured_from_the_injected_clock() -> None:
    headers = {"Retry-After": "Tue, 14 Nov 2023 22:13:25 GMT"}
    assert retry_hint_s(headers, now=lambda: FIXED_NOW) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        (
            "Rate limit reached for text-embedding-3-small in organization org-x on requests "
            "per min (RPM): Limit 3000, Used 3000, Requested 1. Please try again in 2.812s. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            2.812,
        ),
        ("Please try again in 120ms.", 0.12),
        ("please TRY AGAIN IN 1m30s", 90.0),
    ],
)
def test_the_messages_try_again_in_is_a_hint(message: str, seconds: float) -> None:
    assert retry_hint_s({}, message) == pytest.approx(seconds)


def test_the_reset_of_the_exhausted_limit_is_the_last_hint() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "250ms",
    }
    assert retry_hint_s(headers, "Rate limit reached.") == 0.25


def test_without_an_exhausted_limit_the_later_reset_is_the_hint() -> None:
    headers = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "2.5s"}
    assert retry_hint_s(headers) == 2.5


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, ""),
        ({}, "Rate limit reached. Please try again later."),
        ({"retry-after": "whenever"}, "try again in a bit"),
        ({"x-ratelimit-reset-requests": "soon"}, ""),
    ],
)
def test_no_usable_hint_gives_none(headers: dict[str, str], message: str) -> None:
    assert retry_hint_s(headers, message) is None


def test_a_day_long_retry_after_is_not_taken_as_a_hint() -> None:
    assert retry_hint_s({"retry-after": "999999"}, "Please try again in 2s.") == 2.0
