"""Tests for the stub API's account rate limit: the limiter on a fake clock, then over HTTP."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.processes import StubProcess
from stubapi import AccountLimit, StubConfig, StubServer
from stubapi.__main__ import build_parser
from stubapi.ratelimit import LIMIT_HINTS, format_duration

DIMS = 4
MODEL = "text-embedding-3-small"
VISIT = "Visit https://platform.openai.com/account/rate-limits to learn more."
RESET_HEADERS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
_TLS = ssl.create_default_context()  # one TLS context for every client; building one is slow


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, now: float = 0.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(verify=_TLS, timeout=5.0) as client:
        yield client


def start(clock: FakeClock, **options: Any) -> StubServer:
    options.setdefault("dimensions", DIMS)
    return StubServer(port=0, latency_ms=0, limit_clock=clock, **options).start()


@pytest.fixture
def servers() -> Iterator[list[StubServer]]:
    """Servers started by a test, stopped after it."""
    started: list[StubServer] = []
    yield started
    for server in started:
        server.stop()


def embed(http: httpx.Client, server: StubServer, texts: Any, model: str = MODEL) -> httpx.Response:
    return http.post(f"{server.base_url}/embeddings", json={"input": texts, "model": model})


def post_config(http: httpx.Client, server: StubServer, changes: Any) -> httpx.Response:
    return http.post(f"{server.url}/_stub/config", json=changes)


def ratelimit_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("x-ratelimit-")}


# --- the limiter, on a fake clock --------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "20ms"),
        (0.12, "120ms"),
        (0.0004, "0s"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (2.812, "2.812s"),
        (59.9996, "1m0s"),
        (360, "6m0s"),
        (150.5, "2m30.5s"),
        (3723.25, "1h2m3.25s"),
        (-1, "0s"),
    ],
)
def test_format_duration_writes_durations_as_openai_does(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("rpm", "window_s", "allowed"),
    [
        (300, 1.0, 5),
        (300, 6.0, 30),
        (90, 1.0, 1),  # 1.5 per window, floored
        (30, 1.0, 1),  # 0.5 per window, but never less than one
        (200, 0.3, 1),  # 200 * 0.3 / 60 is 0.99999... in floats, yet means exactly one
        (600, 0.5, 5),
    ],
)
def test_each_window_allows_its_share_of_the_per_minute_limit(
    clock: FakeClock, rpm: int, window_s: float, allowed: int
) -> None:
    limiter = AccountLimit(rpm=rpm, window_s=window_s, clock=clock)
    clock.now = 10 * window_s  # the very start of a window
    verdicts = [limiter.check(1).allowed for _ in range(allowed + 2)]
    assert verdicts == [True] * allowed + [False, False]
    clock.now = 11 * window_s
    assert limiter.check(1).allowed


def test_windows_are_fixed_and_a_new_one_starts_with_a_full_allowance(clock: FakeClock) -> None:
    limiter = AccountLimit(rpm=120, window_s=1.0, clock=clock)  # two requests per window
    outcomes = []
    for now in (3.0, 3.5, 3.999, 4.0, 4.999, 5.0, 5.0):
        clock.now = now
        outcomes.append(limiter.check(0).allowed)
    assert outcomes == [True, True, False, True, True, True, True]


def test_refused_requests_still_use_up_the_token_budget(clock: FakeClock) -> None:
    limiter = AccountLimit(tpm=6000, window_s=1.0, clock=clock)  # 100 tokens per window
    assert limiter.check(80).allowed
    refused = limiter.check(50)
    assert (refused.allowed, refused.limit_hit) == (False, "tokens")
    # 80 + 10 would fit, but the refused 50 were charged too, so the storm feeds itself.
    small = limiter.check(10)
    assert not small.allowed
    assert small.headers["x-ratelimit-remaining-tokens"] == "0"


def test_refused_requests_still_count_as_requests(clock: FakeClock) -> None:
    limiter = AccountLimit(rpm=60, window_s=1.0, clock=clock)  # one request per window
    assert limiter.check(1).allowed
    messages = [limiter.check(1).error_message(MODEL) for _ in range(2)]
    assert "Limit 60, Used 60, Requested 1." in messages[0]
    assert "Limit 60, Used 120, Requested 1." in messages[1]


def test_allowed_requests_get_limit_remaining_and_reset_headers(clock: FakeClock) -> None:
    limiter = AccountLimit(rpm=300, tpm=6000, window_s=1.0, clock=clock)
    clock.now = 10.25
    decision = limiter.check(10)
    assert decision.allowed and decision.limit_hit is None and decision.retry_after_s is None
    assert decision.headers == {
        "x-ratelimit-limit-requests": "300",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "750ms",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "90",
        "x-ratelimit-reset-tokens": "750ms",
    }


def test_only_the_configured_kinds_of_limit_get_headers(clock: FakeClock) -> None:
    requests_only = AccountLimit(rpm=300, clock=clock).check(10).headers
    tokens_only = AccountLimit(tpm=6000, clock=clock).check(10).headers
    assert set(requests_only) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert set(tokens_only) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }
    assert not AccountLimit(clock=clock).enabled


def test_a_refusal_says_when_the_window_resets_in_every_hint(clock: FakeClock) -> None:
    limiter = AccountLimit(rpm=10, window_s=6.0, clock=clock)  # one request per window
    clock.now = 12.5
    limiter.check(1)
    refused = limiter.check(1)
    assert refused.retry_after_s == 5.5
    assert refused.headers["retry-after-ms"] == "5500"
    assert refused.headers["Retry-After"] == "6"  # whole seconds, rounded up
    assert refused.headers["x-ratelimit-reset-requests"] == "5.5s"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.error_message(MODEL) == (
        f"Rate limit reached for {MODEL} in organization org-stub on requests per min (RPM): "
        f"Limit 10, Used 10, Requested 1. Please try again in 5.5s. {VISIT}"
    )


def test_retry_after_is_at_least_one_second_and_the_hint_is_rounded_up_to_a_millisecond(
    clock: FakeClock,
) -> None:
    limiter = AccountLimit(rpm=60, window_s=1.0, clock=clock)
    clock.now = 0.9995
    limiter.check(1)
    refused = limiter.check(1)
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["retry-after-ms"] == "1"
    assert "Please try again in 1ms." in refused.error_message(MODEL)


def test_a_token_refusal_names_the_tpm_limit_and_the_tokens_requested(clock: FakeClock) -> None:
    limiter = AccountLimit(rpm=600, tpm=600, window_s=1.0, clock=clock)  # 10 requests, 10 tokens
    clock.now = 0.88
    assert limiter.check(6).allowed
    refused = limiter.check(7)
    assert refused.limit_hit == "tokens"
    assert refused.error_message("m") == (
        "Rate limit reached for m in organization org-stub on tokens per min (TPM): "
        f"Limit 600, Used 360, Requested 7. Please try again in 120ms. {VISIT}"
    )


@pytest.mark.parametrize("hint", LIMIT_HINTS)
def test_each_retry_hint_can_be_sent_on_its_own(clock: FakeClock, hint: str) -> None:
    limiter = AccountLimit(rpm=60, hints=[hint], clock=clock)
    clock.now = 0.5
    assert "x-ratelimit-reset-requests" in limiter.check(1).headers  # allowed: always sent
    refused = limiter.check(1)
    present = {
        "retry-after-ms": "retry-after-ms" in refused.headers,
        "retry-after": "Retry-After" in refused.headers,
        "reset": "x-ratelimit-reset-requests" in refused.headers,
        "message": "Please try again in 500ms." in refused.error_message(MODEL),
    }
    assert present == {name: name == hint for name in LIMIT_HINTS}
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_peek_reports_the_window_without_counting_a_request(clock: FakeClock) -> None:
    limiter = AccountLimit(rpm=120, clock=clock)
    assert limiter.peek()["x-ratelimit-remaining-requests"] == "2"
    assert limiter.peek()["x-ratelimit-remaining-requests"] == "2"
    limiter.check(0)
    assert limiter.peek()["x-ratelimit-remaining-requests"] == "1"


def test_configure_and_reset_zero_the_counters(clock: FakeClock) -> None:
    limiter = AccountLimit(rpm=60, clock=clock)
    limiter.check(1)
    assert not limiter.check(1).allowed
    limiter.reset()
    assert limiter.check(1).allowed
    assert not limiter.check(1).allowed
    limiter.configure(rpm=60, tpm=0, window_s=1.0)
    assert limiter.check(1).allowed


@pytest.mark.parametrize(
    "settings",
    [
        {"rpm": -1, "tpm": 0, "window_s": 1.0},
        {"rpm": 0, "tpm": -5, "window_s": 1.0},
        {"rpm": 1, "tpm": 0, "window_s": 0.0},
        {"rpm": 1, "tpm": 0, "window_s": float("inf")},
        {"rpm": 1, "tpm": 0, "window_s": 1.0, "hints": ["retry-after", "sleep"]},
    ],
)
def test_invalid_limit_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AccountLimit(**settings)


def test_concurrent_callers_share_one_allowance(clock: FakeClock) -> None:
    limiter = AccountLimit(rpm=6000, window_s=1.0, clock=clock)  # 100 requests per window
    allowed: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        verdicts = [limiter.check(1).allowed for _ in range(50)]
        with lock:
            allowed.extend(verdicts)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert (len(allowed), allowed.count(True)) == (400, 100)


# --- over HTTP -----------------------------------------------------------------------------


def test_a_server_without_limits_sends_no_ratelimit_headers(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock))
    responses = [embed(http, server, "a") for _ in range(20)] + [embed(http, server, "")]
    assert [r.status_code for r in responses] == [200] * 20 + [400]
    assert all(not ratelimit_headers(r) for r in responses)
    assert server.stats()["rate_limited_calls"] == 0


def test_a_limited_server_answers_429_in_openais_shape_once_the_window_is_spent(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock, rpm=300))  # five requests per one-second window
    ok = [embed(http, server, "hello") for _ in range(5)]
    assert [r.status_code for r in ok] == [200] * 5
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["4", "3", "2", "1", "0"]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "300"
    assert ok[0].headers["x-ratelimit-reset-requests"] == "750ms"
    limited = embed(http, server, "hello")
    assert limited.status_code == 429
    assert limited.json() == {
        "error": {
            "message": (
                f"Rate limit reached for {MODEL} in organization org-stub on requests per min "
                f"(RPM): Limit 300, Used 300, Requested 1. Please try again in 750ms. {VISIT}"
            ),
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert limited.headers["retry-after-ms"] == "750"
    assert limited.headers["retry-after"] == "1"
    assert limited.headers["x-ratelimit-reset-requests"] == "750ms"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    stats = server.stats()
    assert (stats["calls"], stats["ok_calls"], stats["failed_calls"]) == (6, 5, 1)
    assert stats["rate_limited_calls"] == 1
    clock.now = 1.0
    recovered = embed(http, server, "hello")
    assert recovered.status_code == 200
    assert recovered.headers["x-ratelimit-remaining-requests"] == "4"


def test_tokens_are_charged_as_usage_reports_them_and_refused_ones_still_count(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock, tpm=600))  # ten tokens per window
    first = embed(http, server, ["one two three four", "five six"])  # 4 + 2 cl100k tokens
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] == 6
    assert first.headers["x-ratelimit-remaining-tokens"] == "4"
    assert "x-ratelimit-limit-requests" not in first.headers
    refused = embed(http, server, "a b c d e", model="text-embedding-3-large")  # 5 tokens
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "tokens"
    assert error["message"].startswith(
        "Rate limit reached for text-embedding-3-large in organization org-stub on "
        "tokens per min (TPM): Limit 600, Used 360, Requested 5."
    )
    # 6 + 1 would fit, but the refused 5 tokens were charged as well.
    assert embed(http, server, "a").status_code == 429


def test_requests_that_fail_validation_cost_a_request_but_no_tokens(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock, rpm=120, tpm=600))  # two requests, ten tokens
    bad = http.post(f"{server.base_url}/embeddings", content=b"{not json")
    assert bad.status_code == 400
    assert bad.headers["x-ratelimit-remaining-requests"] == "1"
    assert bad.headers["x-ratelimit-remaining-tokens"] == "10"
    assert embed(http, server, "__REJECT__ " * 4).status_code == 400
    limited = embed(http, server, 5, model="named-model")
    assert limited.status_code == 429
    assert "Rate limit reached for named-model in" in limited.json()["error"]["message"]


def test_the_limit_is_checked_before_fault_injection(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock, rpm=60))  # one request per window
    server.add_fault(status=503, count=2)
    faulted = embed(http, server, "a")
    assert faulted.status_code == 503
    assert faulted.headers["x-ratelimit-remaining-requests"] == "0"
    limited = embed(http, server, "a")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    # The limiter's refusal did not consume the second faulted call.
    assert server.pending_faults()[0]["remaining_calls"] == 1
    assert server.stats()["rate_limited_calls"] == 1


def test_unauthenticated_calls_do_not_count_but_do_get_headers(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    key = "sk-limited"
    servers.append(server := start(clock, rpm=60, api_key=key))
    url = f"{server.base_url}/embeddings"
    payload = {"input": "a", "model": MODEL}
    for _ in range(3):
        denied = http.post(url, json=payload)
        assert denied.status_code == 401
        assert denied.headers["x-ratelimit-remaining-requests"] == "1"
    auth = {"Authorization": f"Bearer {key}"}
    assert http.post(url, json=payload, headers=auth).status_code == 200
    assert http.post(url, json=payload, headers=auth).status_code == 429
    assert server.stats()["rate_limited_calls"] == 1


@pytest.mark.parametrize("hint", LIMIT_HINTS)
def test_a_429_carries_only_the_configured_hints(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock, hint: str
) -> None:
    servers.append(server := start(clock))
    clock.now = 0.5
    assert post_config(http, server, {"rpm": 60, "limit_hints": [hint]}).status_code == 200
    ok = embed(http, server, "a")
    assert ok.status_code == 200
    assert "x-ratelimit-reset-requests" in ok.headers  # a 200 carries it whatever the hints
    limited = embed(http, server, "a")
    assert limited.status_code == 429
    present = {
        "retry-after-ms": "retry-after-ms" in limited.headers,
        "retry-after": "retry-after" in limited.headers,
        "reset": "x-ratelimit-reset-requests" in limited.headers,
        "message": "Please try again in 500ms." in limited.json()["error"]["message"],
    }
    assert present == {name: name == hint for name in LIMIT_HINTS}


def test_a_429_without_hints_still_names_the_limit(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock, rpm=60, limit_hints=()))
    embed(http, server, "a")
    limited = embed(http, server, "a")
    assert limited.status_code == 429
    assert set(limited.headers) & {"retry-after", "retry-after-ms", *RESET_HEADERS} == set()
    assert limited.json()["error"]["message"] == (
        f"Rate limit reached for {MODEL} in organization org-stub on requests per min (RPM): "
        f"Limit 60, Used 60, Requested 1. {VISIT}"
    )


def test_limits_change_at_runtime_through_the_config_endpoint_until_reset(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock))
    listed = http.get(f"{server.url}/_stub/config").json()
    assert (listed["rpm"], listed["tpm"], listed["limit_window_s"]) == (0, 0, 1.0)
    assert listed["limit_hints"] == list(LIMIT_HINTS)
    changes = {"rpm": 300, "tpm": 0, "limit_window_s": 6, "limit_hints": ["message"]}
    answer = post_config(http, server, changes)
    assert {key: answer.json()[key] for key in changes} == changes
    statuses = [embed(http, server, "a").status_code for _ in range(31)]
    assert statuses == [200] * 30 + [429]  # 300 per minute is 30 per six-second window
    # Setting a limit again, even to the same value, starts from a clean window.
    post_config(http, server, {"rpm": 300})
    assert embed(http, server, "a").status_code == 200
    assert http.post(f"{server.url}/_stub/reset").status_code == 200
    assert http.get(f"{server.url}/_stub/config").json()["rpm"] == 0
    assert not ratelimit_headers(embed(http, server, "a"))


def test_reset_restores_the_initial_limits_with_fresh_counters(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock, rpm=60))
    assert embed(http, server, "a").status_code == 200
    assert embed(http, server, "a").status_code == 429
    server.configure(rpm=0)
    assert embed(http, server, "a").status_code == 200
    server.reset()
    assert server.config.rpm == 60
    assert [embed(http, server, "a").status_code for _ in range(2)] == [200, 429]
    assert server.stats()["rate_limited_calls"] == 1


def test_stub_server_configure_changes_the_limits(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock
) -> None:
    servers.append(server := start(clock))
    config = server.configure(rpm=120, tpm=6000, limit_window_s=0.5, limit_hints=["reset"])
    assert (config.rpm, config.tpm, config.limit_window_s) == (120, 6000, 0.5)
    assert config.limit_hints == ("reset",)
    response = embed(http, server, "a")
    assert response.headers["x-ratelimit-remaining-requests"] == "0"  # one per half second
    assert response.headers["x-ratelimit-remaining-tokens"] == "49"
    assert response.headers["x-ratelimit-reset-tokens"] == "250ms"


@pytest.mark.parametrize(
    "bad",
    [
        {"rpm": -1},
        {"rpm": 1.5},
        {"rpm": True},
        {"tpm": "100"},
        {"limit_window_s": 0},
        {"limit_window_s": -2.5},
        {"limit_hints": ["message", "carrier-pigeon"]},
        {"limit_hints": "message"},
        {"limit_hints": [1]},
    ],
)
def test_the_config_endpoint_refuses_bad_limit_settings(
    http: httpx.Client, servers: list[StubServer], clock: FakeClock, bad: dict[str, Any]
) -> None:
    servers.append(server := start(clock, rpm=60))
    response = post_config(http, server, bad)
    assert response.status_code == 400
    assert "Invalid config request" in response.json()["error"]["message"]
    assert server.config.rpm == 60 and server.config.limit_window_s == 1.0


@pytest.mark.parametrize(
    "settings",
    [{"rpm": -1}, {"tpm": -1}, {"limit_window_s": 0.0}, {"limit_hints": ("nope",)}],
)
def test_stub_config_refuses_bad_limit_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        StubConfig(**settings)


def test_stats_keep_every_key_and_add_rate_limited_calls(clock: FakeClock) -> None:
    with StubServer(limit_clock=clock) as server:
        assert set(server.stats()) == {
            "calls",
            "ok_calls",
            "failed_calls",
            "rate_limited_calls",
            "inputs_per_call",
            "total_inputs",
            "peak_concurrency",
            "current_concurrency",
            "texts_seen",
        }


# --- command line and devstack -------------------------------------------------------------


def test_the_cli_parses_limit_flags_and_their_environment_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("STUB_API_RPM", "STUB_API_TPM", "STUB_API_LIMIT_WINDOW_S"):
        monkeypatch.delenv(name, raising=False)
    defaults = build_parser().parse_args([])
    assert (defaults.rpm, defaults.tpm, defaults.limit_window_s) == (0, 0, 1.0)
    flags = build_parser().parse_args(["--rpm", "300", "--tpm", "0", "--limit-window-s", "6"])
    assert (flags.rpm, flags.tpm, flags.limit_window_s) == (300, 0, 6.0)
    monkeypatch.setenv("STUB_API_RPM", "500")
    monkeypatch.setenv("STUB_API_TPM", "1000000")
    monkeypatch.setenv("STUB_API_LIMIT_WINDOW_S", "0.5")
    env = build_parser().parse_args([])
    assert (env.rpm, env.tpm, env.limit_window_s) == (500, 1_000_000, 0.5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--rpm", "-1"],
        ["--tpm", "-5"],
        ["--rpm", "1.5"],
        ["--tpm", "lots"],
        ["--limit-window-s", "0"],
        ["--limit-window-s", "inf"],
        ["--limit-window-s", "soon"],
    ],
)
def test_the_cli_rejects_bad_limit_values(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_the_cli_rejects_a_negative_rpm_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STUB_API_RPM", "-10")
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
    assert "must be >= 0" in capsys.readouterr().err


def test_a_stub_process_enforces_its_limit_and_can_be_reconfigured(tmp_path: Path) -> None:
    stub = StubProcess(tmp_path / "stub.log", latency_ms=0, dimensions=DIMS, rpm=120, tpm=6000)
    try:
        stub.wait_ready()
        config = stub.configure(limit_window_s=3600)  # 7,200 requests: no rollover mid-test
        assert (config["rpm"], config["tpm"], config["limit_window_s"]) == (120, 6000, 3600)
        with httpx.Client(verify=_TLS, timeout=5.0) as client:
            body = json.dumps({"input": "a", "model": MODEL})
            response = client.post(f"{stub.base_url}/embeddings", content=body)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "120"
        assert response.headers["x-ratelimit-remaining-requests"] == "7199"
        with pytest.raises(httpx.HTTPStatusError):
            stub.configure(rpm=-1)
    finally:
        stub.stop()
