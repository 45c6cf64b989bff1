"""The shared budget's Lua scripts (on fakeredis with Lua) and one process's gate to it.

The scripts take "now" from an injected clock here; in production they read Redis's TIME.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import fakeredis
import pytest

from stubapi.ratelimit import AccountLimit
from worker.budget import Admission, BudgetGate, SharedBudget, estimate_tokens
from worker.budget.shared import pause_for_exhausted_s
from worker.embeddings.client import CallResult
from worker.embeddings.ratelimit_headers import RateLimitHeaders, parse_rate_limit_headers
from worker.errors import EmbeddingBudgetWaitError, EmbeddingConfigError, EmbeddingRateLimitError
from worker.settings import Settings

MODEL = "text-embedding-3-small"


class Clock:
    def __init__(self, start_ms: float = 1_000_000.0) -> None:
        self.ms = start_ms

    def __call__(self) -> float:
        return self.ms


class StubClock:
    """The stub's limiter clock: monotonic seconds that move only when a test moves them."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_budget(server: fakeredis.FakeServer, clock: Clock) -> Callable[..., SharedBudget]:
    def make(**settings: object) -> SharedBudget:
        client = fakeredis.FakeRedis(server=server)
        return SharedBudget(client, Settings(**settings), now_ms=clock)  # type: ignore[arg-type]

    return make


def _admit_all(budget: SharedBudget, clock: Clock, seconds: float, tokens: int = 1) -> list[float]:
    """Ask every 2 ms for ``seconds``; return the times (ms) of admitted calls."""
    admitted = []
    end = clock.ms + seconds * 1000
    while clock.ms < end:
        if budget.try_acquire(MODEL, tokens).admitted:
            admitted.append(clock.ms)
        clock.ms += 2
    return admitted


def test_a_configured_rpm_is_paced_evenly_below_the_limit(make_budget, clock) -> None:
    budget = make_budget(rpm_limit=600)  # 10 calls a second
    admitted = _admit_all(budget, clock, seconds=10)
    # 95% of the limit (the default headroom), give or take the first call.
    assert 94 <= len(admitted) <= 96
    gaps = [b - a for a, b in itertools.pairwise(admitted)]
    assert min(gaps) >= 100 / 0.95 - 5 - 2  # never closer than a slot less the tolerance


def test_no_one_second_window_gets_more_than_its_share(make_budget, clock) -> None:
    budget = make_budget(rpm_limit=600)
    admitted = _admit_all(budget, clock, seconds=10)
    for start in admitted:
        in_window = [t for t in admitted if start <= t < start + 1000]
        assert len(in_window) <= 10


def test_a_refused_acquisition_consumes_nothing(make_budget, server, clock) -> None:
    budget = make_budget(rpm_limit=60, tpm_limit=6000)
    assert budget.try_acquire(MODEL, 10).admitted
    state = fakeredis.FakeRedis(server=server).hgetall(budget.key(MODEL))
    for _ in range(50):
        refused = budget.try_acquire(MODEL, 10)
        assert not refused.admitted
        clock.ms += 1
    assert fakeredis.FakeRedis(server=server).hgetall(budget.key(MODEL)) == state


def test_the_refusal_says_how_long_to_wait_and_that_wait_is_enough(make_budget, clock) -> None:
    budget = make_budget(rpm_limit=60)
    assert budget.try_acquire(MODEL, 1).admitted
    refusal = budget.try_acquire(MODEL, 1)
    assert not refusal.admitted and not refusal.paused
    assert refusal.wait_s == pytest.approx(1 / 0.95 - 0.005, abs=1e-3)
    clock.ms += refusal.wait_s * 1000 - 1
    assert not budget.try_acquire(MODEL, 1).admitted
    clock.ms += 1
    assert budget.try_acquire(MODEL, 1).admitted


def test_tokens_weigh_a_call_by_its_cost(make_budget, clock) -> None:
    budget = make_budget(tpm_limit=60_000)  # 1,000 tokens a second
    assert budget.try_acquire(MODEL, 4_000).admitted
    wait = budget.try_acquire(MODEL, 10).wait_s
    assert wait == pytest.approx(4.0 / 0.95 - 0.005, abs=1e-3)
    small = make_budget(tpm_limit=60_000)
    assert small.try_acquire("other-model", 100).admitted
    assert small.try_acquire("other-model", 10).wait_s == pytest.approx(
        0.1 / 0.95 - 0.005, abs=1e-3
    )


def test_both_limits_must_admit_a_call(make_budget, clock) -> None:
    budget = make_budget(rpm_limit=6000, tpm_limit=60_000)
    assert budget.try_acquire(MODEL, 2_000).admitted
    clock.ms += 20  # the request slot is free again, the tokens are not
    refusal = budget.try_acquire(MODEL, 10)
    assert not refusal.admitted
    assert refusal.wait_s > 1.0


def test_a_refund_after_the_call_gives_back_the_overestimate(make_budget, clock) -> None:
    budget = make_budget(tpm_limit=60_000)
    assert budget.try_acquire(MODEL, 4_000).admitted
    before = budget.try_acquire(MODEL, 1).wait_s
    budget.report(MODEL, token_correction=-3_000)
    after = budget.try_acquire(MODEL, 1).wait_s
    assert after == pytest.approx(before - 3.0 / 0.95, abs=1e-3)


def test_a_refund_never_banks_a_burst(make_budget, clock) -> None:
    budget = make_budget(tpm_limit=60_000)
    assert budget.try_acquire(MODEL, 10).admitted
    clock.ms += 5_000
    budget.report(MODEL, token_correction=-50_000)
    assert budget.try_acquire(MODEL, 900).admitted
    assert not budget.try_acquire(MODEL, 900).admitted


def test_two_processes_draw_on_one_budget(make_budget, clock) -> None:
    first, second = make_budget(rpm_limit=600), make_budget(rpm_limit=600)
    admitted = 0
    for _ in range(2_500):
        admitted += first.try_acquire(MODEL, 1).admitted
        admitted += second.try_acquire(MODEL, 1).admitted
        clock.ms += 4
    assert 94 <= admitted <= 96


def test_models_and_providers_have_budgets_of_their_own(make_budget) -> None:
    budget = make_budget(rpm_limit=1)
    assert budget.try_acquire(MODEL, 1).admitted
    assert budget.try_acquire("text-embedding-3-large", 1).admitted
    other_provider = make_budget(rpm_limit=1, base_url="http://tei.local/v1")
    assert other_provider.try_acquire(MODEL, 1).admitted
    assert not budget.try_acquire(MODEL, 1).admitted


def test_per_model_limits_override_the_defaults(make_budget, clock) -> None:
    budget = make_budget(rpm_limit=60, model_limits="fast=6000:0, slow = 1:0")
    assert budget.try_acquire("fast", 1).admitted
    clock.ms += 11
    assert budget.try_acquire("fast", 1).admitted
    assert budget.try_acquire("slow", 1).admitted
    clock.ms += 1_000
    assert not budget.try_acquire("slow", 1).admitted


@pytest.mark.parametrize("raw", ["fast=10", "=1:1", "fast=a:1", "fast=-1:5", "fast:1:2"])
def test_a_bad_per_model_limit_fails_naming_the_variable(raw: str) -> None:
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_MODEL_LIMITS"):
        Settings(model_limits=raw)


@pytest.mark.parametrize(
    ("name", "value"), [("EMBEDDINGS_RPM_LIMIT", "-5"), ("EMBEDDINGS_TPM_LIMIT", "1.5k")]
)
def test_a_bad_limit_fails_at_start_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(EmbeddingConfigError, match=name):
        Settings.from_env({name: value})


def test_without_limits_calls_are_admitted_and_nothing_is_written(make_budget, server) -> None:
    budget = make_budget()
    assert all(budget.try_acquire(MODEL, 100).admitted for _ in range(100))
    assert fakeredis.FakeRedis(server=server).exists(budget.key(MODEL)) == 0


def test_limits_the_api_reports_are_learned_for_every_process(make_budget, clock) -> None:
    reporter, other = make_budget(), make_budget()
    reporter.report(MODEL, limits=RateLimitHeaders(limit_requests=600, limit_tokens=0))
    admitted = _admit_all(other, clock, seconds=5)
    assert 46 <= len(admitted) <= 48


def test_a_configured_limit_wins_over_a_learned_one(make_budget, clock) -> None:
    budget = make_budget(rpm_limit=60)
    budget.report(MODEL, limits=RateLimitHeaders(limit_requests=6000))
    assert len(_admit_all(budget, clock, seconds=5)) <= 5


def test_a_pause_stops_every_process_until_it_ends(make_budget, clock) -> None:
    first, second = make_budget(), make_budget()
    assert first.report(MODEL, pause_s=2.0) is True
    refusal = second.try_acquire(MODEL, 1)
    assert refusal == Admission(False, 2.0, True)
    clock.ms += 2_000
    assert second.try_acquire(MODEL, 1).admitted


def test_a_pause_during_a_pause_extends_it_without_starting_another(make_budget, clock) -> None:
    budget = make_budget()
    assert budget.report(MODEL, pause_s=1.0) is True
    clock.ms += 500
    assert budget.report(MODEL, pause_s=0.2) is False  # shorter: changes nothing
    assert budget.try_acquire(MODEL, 1).wait_s == pytest.approx(0.5)
    assert budget.report(MODEL, pause_s=3.0) is False
    assert budget.try_acquire(MODEL, 1).wait_s == pytest.approx(3.0)


def test_an_unreachable_redis_is_a_typed_error_never_an_admission() -> None:
    budget = SharedBudget.from_url(
        "redis://127.0.0.1:1/0", Settings(rpm_limit=60, redis_socket_timeout_s=0.2)
    )
    with pytest.raises(EmbeddingBudgetWaitError, match="unreachable"):
        budget.try_acquire(MODEL, 1)
    with pytest.raises(EmbeddingBudgetWaitError):
        budget.report(MODEL, pause_s=1.0)


def test_token_estimates_err_on_the_high_side() -> None:
    assert estimate_tokens("a") == 1
    english = "The quick brown fox jumps over the lazy dog. " * 20
    assert estimate_tokens(english) >= len(english) / 4  # about four characters a token
    assert estimate_tokens("日本語のテキスト") >= 8  # one token a character at most


def test_the_cluster_pauses_when_the_api_says_nothing_remains() -> None:
    # 0 of 500 requests left, 0.8 s until the bucket is full again: the next request is
    # allowed once one of the 500 has come back, 0.8 / 500 s later.
    spent = RateLimitHeaders(
        limit_requests=500, remaining_requests=0, reset_requests_s=0.8, remaining_tokens=10
    )
    assert pause_for_exhausted_s(spent, tokens_used=5) == pytest.approx(0.8 / 500)
    # 100 of 1,000 tokens left, 2 s until all 1,000 are back: 400 more are needed for a call
    # like this one, at 900 tokens per 2 s.
    short_of_tokens = RateLimitHeaders(
        remaining_requests=40, limit_tokens=1000, remaining_tokens=100, reset_tokens_s=2.0
    )
    assert pause_for_exhausted_s(short_of_tokens, tokens_used=500) == pytest.approx(2.0 * 400 / 900)
    assert pause_for_exhausted_s(short_of_tokens, tokens_used=50) == 0.0
    assert pause_for_exhausted_s(RateLimitHeaders(), tokens_used=50) == 0.0


def test_without_the_limit_the_pause_falls_back_to_the_whole_reset() -> None:
    # The refill rate cannot be told without the limit: waiting for the reset is the one
    # wait that is surely long enough.
    spent = RateLimitHeaders(remaining_requests=0, reset_requests_s=0.8)
    assert pause_for_exhausted_s(spent, tokens_used=5) == 0.8
    nonsense = RateLimitHeaders(limit_requests=0, remaining_requests=0, reset_requests_s=0.8)
    assert pause_for_exhausted_s(nonsense, tokens_used=5) == 0.8


def test_the_stubs_spent_minute_pauses_the_cluster_for_one_request_not_the_minute() -> None:
    # The case: 600 RPM spent 0.2 s into the minute. The headers say the limit is
    # full again in 59.8 s, which at OpenAI is when the bucket is full, not when the next
    # request is allowed (one every 0.1 s). The cluster used to pause for 59.8 s.
    stub_clock = StubClock(0.2)
    account = AccountLimit(rpm=600, window_s=60.0, clock=stub_clock)
    decisions = [account.check(tokens=8) for _ in range(600)]
    assert all(decision.allowed for decision in decisions)
    limits = parse_rate_limit_headers(decisions[-1].headers)
    assert (limits.limit_requests, limits.remaining_requests) == (600, 0)
    assert limits.reset_requests_s == pytest.approx(59.8)
    assert pause_for_exhausted_s(limits, tokens_used=8) == pytest.approx(59.8 / 600)


def test_after_the_stubs_last_request_every_worker_waits_a_tenth_of_a_second(
    make_budget, clock
) -> None:
    account = AccountLimit(rpm=600, window_s=60.0, clock=StubClock(0.2))
    for _ in range(599):
        account.check(tokens=8)
    last = account.check(tokens=8)
    budget = make_budget()
    gate = BudgetGate.from_settings(budget, budget._settings)
    call = CallResult([[0.1]], {"total_tokens": 8}, 0, 1.0, parse_rate_limit_headers(last.headers))
    gate.after_call(MODEL, tokens_charged=8, call=call)
    other_worker = make_budget()
    waiting = other_worker.try_acquire(MODEL, 8)
    assert not waiting.admitted
    assert waiting.wait_s <= 0.1 + 0.001
    clock.ms += 106  # the pause (0.1 s) and the learned 600 RPM's pacing at 95 %
    assert other_worker.try_acquire(MODEL, 8).admitted


class FakeBudget:
    """Answers from a script; records reports."""

    def __init__(self, answers: list[Admission | Exception]) -> None:
        self.answers = answers
        self.reports: list[dict[str, object]] = []
        self.pause_started = True

    def try_acquire(
        self, model: str, tokens: int, lane: str = "interactive", *, serves_bulk: bool = False
    ) -> Admission:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def report(self, model: str, **kwargs: object) -> bool:
        self.reports.append(kwargs)
        return self.pause_started

    def close(self) -> None:
        pass


def _gate(budget: FakeBudget, clock: Callable[[], float] = lambda: 0.0, **kw: float) -> BudgetGate:
    options = {"max_wait_s": 5.0, "initial_backoff_s": 1.0, "max_backoff_s": 32.0}
    options.update(kw)
    return BudgetGate(
        budget,  # type: ignore[arg-type]
        max_rate_limited=3,
        jitter_factor=0.2,
        clock=clock,
        random=lambda: 0.5,
        **options,
    )


def test_a_redis_blip_reads_as_a_short_wait_then_fails_past_the_bound(caplog) -> None:
    now = [0.0]
    down = EmbeddingBudgetWaitError("the rate-limit budget's Redis is unreachable")
    gate = _gate(FakeBudget([down, down, down, down]), clock=lambda: now[0], max_wait_s=5.0)
    with caplog.at_level(logging.WARNING):
        assert gate.try_admit(MODEL, 1) == Admission(False, 0.5)
        now[0] = 4.0
        assert gate.try_admit(MODEL, 1) == Admission(False, 0.5)
        now[0] = 5.5
        with pytest.raises(EmbeddingBudgetWaitError):
            gate.try_admit(MODEL, 1)
    assert sum("unreachable" in r.message for r in caplog.records) == 1


def test_only_a_pause_gets_jitter_the_limits_pacing_is_exact() -> None:
    gate = _gate(FakeBudget([]))
    assert gate.sleep_s(Admission(False, 0.25, paused=False)) == 0.25
    assert gate.sleep_s(Admission(False, 2.0, paused=True)) == pytest.approx(2.0 * 1.1)


def test_a_429_pauses_the_cluster_for_the_servers_hint_plus_jitter(caplog) -> None:
    budget = FakeBudget([])
    gate = _gate(budget)
    error = EmbeddingRateLimitError("429", 429, "Rate limit reached")
    error.retry_after_s = 2.0
    with caplog.at_level(logging.WARNING):
        assert gate.after_rate_limit(MODEL, error, attempt=1) == pytest.approx(2.2)
        budget.pause_started = False
        gate.after_rate_limit(MODEL, error, attempt=2)
    assert budget.reports[0]["pause_s"] == pytest.approx(2.2)
    warnings = [r for r in caplog.records if "pausing" in r.message]
    assert len(warnings) == 1  # one WARNING per pause, not one per call or text


def test_a_429_without_a_hint_pauses_for_the_backoff_of_its_attempt() -> None:
    gate = _gate(FakeBudget([]))
    error = EmbeddingRateLimitError("429", 429, "slow down")
    assert gate.after_rate_limit(MODEL, error, attempt=3) == pytest.approx(4.0 * 1.1)


def test_a_call_settles_its_tokens_and_shares_the_apis_limits() -> None:
    budget = FakeBudget([])
    gate = _gate(budget)
    limits = RateLimitHeaders(limit_requests=500, remaining_requests=0, reset_requests_s=0.3)
    call = CallResult([[0.1]], {"total_tokens": 40}, 0, 1.0, limits)
    gate.after_call(MODEL, tokens_charged=100, call=call)
    assert budget.reports == [
        {"token_correction": -60, "limits": limits, "pause_s": pytest.approx(0.3 / 500)}
    ]


def test_a_call_with_nothing_to_report_costs_no_round_trip() -> None:
    budget = FakeBudget([])
    _gate(budget).after_call(MODEL, 8, CallResult([[0.1]], {"total_tokens": 8}, 0, 1.0))
    assert budget.reports == []
