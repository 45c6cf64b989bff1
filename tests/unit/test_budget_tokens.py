"""The budget admits a call on its exact cl100k_base tokens when the model's encoding is known,
on the estimate otherwise (the shared budget's Lua scripts on fakeredis with Lua)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import fakeredis
import httpx
import pytest

import worker.tokens as tokens
from tests.unit.conftest import ok_response
from worker.budget import BudgetGate, SharedBudget
from worker.budget.admission import BudgetAdmission
from worker.budget.split_calls import MeteredCalls
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.names import LANE_INTERACTIVE
from worker.settings import Settings
from worker.tokens import CL100K_BASE, ESTIMATE, estimate_tokens, token_counter

FOX = "The quick brown fox jumps over the lazy dog"  # 9 cl100k_base tokens, 44 bytes
TEXTS = [FOX] * 8
EXACT = 8 * 9
ESTIMATED = 8 * 22  # one token per two UTF-8 bytes
# tpm_limit 6,000 at the default 5% headroom: one token holds the budget 60,000 / 5,700 ms,
# and a call may start 50 ms (the headroom of one second) ahead of its slot.
TPM = 6000
MS_PER_TOKEN = 60_000 / (TPM * 0.95)
TOLERANCE_MS = 5.0  # a tenth of the 5% headroom of a second (worker/budget/shared.py)


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000.0

    def __call__(self) -> float:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def _cl100k_loaded() -> None:
    # A budget counts exactly once the encoding has loaded (in the background); these tests
    # are about what it counts then.
    token_counter(CL100K_BASE)


@pytest.fixture
def make_admission(clock: Clock) -> Iterator[Callable[..., BudgetAdmission]]:
    made: list[EmbeddingBatcher] = []

    def make(**settings: object) -> BudgetAdmission:
        config = Settings(tpm_limit=TPM, **settings)  # type: ignore[arg-type]
        budget = SharedBudget(fakeredis.FakeRedis(), config, now_ms=clock)  # type: ignore[arg-type]
        batcher = EmbeddingBatcher(
            EmbeddingConfig(base_url="http://api.test/v1", api_key="sk-test"),
            transport=httpx.MockTransport(ok_response),
        )
        made.append(batcher)
        gate = BudgetGate.from_settings(budget, config)
        return BudgetAdmission(batcher, gate, stopping=threading.Event(), clock=lambda: 0.0)

    yield make
    for batcher in made:
        batcher.close()


def _next_wait_ms(admission: BudgetAdmission, model: str) -> float:
    verdict = admission.ask(model, ["x"], LANE_INTERACTIVE)
    assert not verdict.admitted
    return verdict.wait_s * 1000


def test_a_call_to_an_openai_model_is_charged_its_exact_cl100k_tokens(make_admission) -> None:
    admission = make_admission()
    verdict = admission.ask("text-embedding-3-small", TEXTS, LANE_INTERACTIVE)
    assert (verdict.admitted, verdict.tokens) == (True, EXACT)
    # The next call waits for exactly those tokens to drain, not for the estimate's 176.
    wait_ms = _next_wait_ms(admission, "text-embedding-3-small")
    assert wait_ms == pytest.approx(EXACT * MS_PER_TOKEN - TOLERANCE_MS, abs=1.0)


def test_a_call_to_an_unknown_model_is_charged_the_estimate(make_admission) -> None:
    admission = make_admission(model="BAAI/bge-m3")
    verdict = admission.ask("BAAI/bge-m3", TEXTS, LANE_INTERACTIVE)
    assert (verdict.admitted, verdict.tokens) == (True, ESTIMATED)
    wait_ms = _next_wait_ms(admission, "BAAI/bge-m3")
    assert wait_ms == pytest.approx(ESTIMATED * MS_PER_TOKEN - TOLERANCE_MS, abs=1.0)


def test_the_tokenizer_setting_decides_how_a_model_is_counted(make_admission) -> None:
    admission = make_admission(
        tokenizer="text-embedding-3-small=estimate,my-deployment=cl100k_base"
    )
    assert admission.ask("text-embedding-3-small", TEXTS, LANE_INTERACTIVE).tokens == ESTIMATED
    assert admission.ask("my-deployment", TEXTS, LANE_INTERACTIVE).tokens == EXACT


def test_a_call_asked_while_the_encoding_still_loads_is_charged_the_estimate(
    make_admission, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "_counters", {ESTIMATE: estimate_tokens})
    monkeypatch.setattr(tokens, "_background", {CL100K_BASE: threading.Thread()})  # loading
    admission = make_admission()
    verdict = admission.ask("text-embedding-3-small", TEXTS, LANE_INTERACTIVE)
    assert (verdict.admitted, verdict.tokens) == (True, ESTIMATED)


def test_a_split_call_is_admitted_on_its_exact_tokens(clock: Clock) -> None:
    settings = Settings(tpm_limit=TPM)
    budget = SharedBudget(fakeredis.FakeRedis(), settings, now_ms=clock)  # type: ignore[arg-type]

    def answer(request: httpx.Request) -> httpx.Response:
        response = ok_response(request)
        body = response.json()
        body["usage"] = {"prompt_tokens": EXACT, "total_tokens": EXACT}  # as OpenAI counts
        return httpx.Response(200, json=body)

    batcher = EmbeddingBatcher(
        EmbeddingConfig(base_url="http://api.test/v1", api_key="sk-test"),
        transport=httpx.MockTransport(answer),
    )
    gate = BudgetGate.from_settings(budget, settings)
    metered = MeteredCalls(
        batcher.client,
        gate,
        admitting=threading.Lock(),
        stopping=threading.Event(),
        clock=lambda: 0.0,
    )
    try:
        metered.embed(TEXTS, "text-embedding-3-small")
        refused = budget.try_acquire("text-embedding-3-small", 1)
    finally:
        batcher.close()
    # Charged 72 before the call and settled to the usage's 72: no correction either way.
    assert refused.wait_s * 1000 == pytest.approx(EXACT * MS_PER_TOKEN - TOLERANCE_MS, abs=1.0)
