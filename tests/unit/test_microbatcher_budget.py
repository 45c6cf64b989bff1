"""The micro-batcher under the shared budget: texts wait in the process, calls stay full."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import fakeredis
import httpx
import pytest

from worker.budget import Admission, BudgetGate, SharedBudget
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.errors import EmbeddingAPIError, EmbeddingBudgetWaitError, EmbeddingRateLimitError
from worker.microbatcher import MicroBatcher, MicroBatcherClosed
from worker.settings import Settings


class API:
    """Answers like the API; ``rate_limit_next`` calls get a 429 first."""

    def __init__(
        self, rate_limit_next: int = 0, retry_after_ms: str = "50", reject: str | None = None
    ) -> None:
        self.calls: list[list[str]] = []
        self.statuses: list[int] = []
        self.rate_limit_next = rate_limit_next
        self.retry_after_ms = retry_after_ms
        self.reject = reject  # a call holding this text is refused whole, naming no input
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        texts = list(json.loads(request.content)["input"])
        with self.lock:
            self.calls.append(texts)
            if self.rate_limit_next:
                self.rate_limit_next -= 1
                self.statuses.append(429)
                return httpx.Response(
                    429,
                    json={"error": {"message": "Slow down.", "code": "rate_limit_exceeded"}},
                    headers={"retry-after-ms": self.retry_after_ms},
                )
            if self.reject in texts:
                self.statuses.append(400)
                return httpx.Response(
                    400,
                    json={"error": {"message": "Invalid input.", "type": "invalid_request_error"}},
                )
            self.statuses.append(200)
        data = [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(texts)]
        usage = {"total_tokens": sum(len(t) // 4 for t in texts)}
        return httpx.Response(200, json={"data": data, "usage": usage})


class ScriptedBudget:
    """A budget that answers ``first`` answers in turn, then always ``answer``."""

    def __init__(self, answer: Admission, first: tuple[Admission, ...] = ()) -> None:
        self.answer = answer
        self.first = list(first)
        self.asked = 0

    def count_tokens(self, model: str, texts: list[str]) -> int:
        return len(texts)

    def try_acquire(
        self, model: str, tokens: int, lane: str = "interactive", *, serves_bulk: bool = False
    ) -> Admission:
        self.asked += 1
        return self.first.pop(0) if self.first else self.answer

    def report(self, model: str, **kwargs: object) -> bool:
        return False

    def close(self) -> None:
        pass


@pytest.fixture
def make_microbatcher() -> Iterator[Callable[..., MicroBatcher]]:
    made: list[MicroBatcher] = []

    def make(
        api: API, budget: object, *, max_wait_s: float = 5.0, **config: object
    ) -> MicroBatcher:
        cfg = EmbeddingConfig(
            base_url="http://stub.test/v1",
            api_key="sk-test",
            encoding_format="float",
            max_retries=0,
            **config,  # type: ignore[arg-type]
        )
        batcher = EmbeddingBatcher(
            cfg, transport=httpx.MockTransport(api), sleep=lambda s: None, retry_rate_limits=False
        )
        gate = BudgetGate(
            budget,  # type: ignore[arg-type]
            max_wait_s=max_wait_s,
            max_rate_limited=2,
            initial_backoff_s=0.05,
            max_backoff_s=0.5,
            jitter_factor=0.2,
        )
        microbatcher = MicroBatcher(batcher, flush_interval_s=0.01, gate=gate)
        made.append(microbatcher)
        return microbatcher

    yield make
    for microbatcher in made:
        microbatcher.close(timeout_s=5)


def _shared_budget(**settings: object) -> SharedBudget:
    return SharedBudget(fakeredis.FakeRedis(), Settings(**settings))  # type: ignore[arg-type]


def test_texts_waiting_for_budget_leave_in_full_calls(make_microbatcher) -> None:
    api = API()
    # 300 calls a minute: a call every ~0.2 s, while texts arrive much faster.
    microbatcher = make_microbatcher(api, _shared_budget(rpm_limit=300))
    futures = [microbatcher.submit(f"text {i}") for i in range(33)]
    vectors = [f.result(timeout=10) for f in futures]
    assert vectors[5] == [6.0, 1.0]
    sizes = [len(call) for call in api.calls]
    # The first call may leave before the rest arrived; every later one waited and filled up.
    assert sum(sizes) == 33
    assert all(size == 8 for size in sizes[1:-1]), sizes


def test_a_429_pauses_and_sends_the_same_texts_again_in_one_call(make_microbatcher) -> None:
    api = API(rate_limit_next=1, retry_after_ms="100")
    microbatcher = make_microbatcher(api, _shared_budget(), pool_size=1)
    futures = [microbatcher.submit(f"t{i}") for i in range(8)]
    assert [f.result(timeout=10) for f in futures] == [[2.0, 1.0]] * 8
    assert api.statuses == [429, 200]
    assert api.calls[0] == api.calls[1]  # nothing split, nothing dropped


def test_texts_that_keep_meeting_429s_become_retryable_errors(make_microbatcher) -> None:
    api = API(rate_limit_next=100, retry_after_ms="10")
    microbatcher = make_microbatcher(api, _shared_budget(), pool_size=1)
    future = microbatcher.submit("unlucky")
    with pytest.raises(EmbeddingRateLimitError) as caught:
        future.result(timeout=10)
    assert caught.value.status_code == 429
    assert api.statuses == [429, 429, 429]  # the first try and max_rate_limited (2) more


def test_a_wait_past_the_bound_becomes_a_retry_that_honours_the_wait(make_microbatcher) -> None:
    api = API()
    paused = ScriptedBudget(Admission(False, 60.0, paused=True))
    microbatcher = make_microbatcher(api, paused, max_wait_s=5.0)
    future = microbatcher.submit("patient")
    with pytest.raises(EmbeddingBudgetWaitError) as caught:
        future.result(timeout=10)
    assert caught.value.retry_after_s == 60.0
    assert api.calls == []


def test_texts_that_waited_past_the_bound_become_retries(make_microbatcher) -> None:
    api = API()
    # Each refusal asks for a short wait, but the budget never admits.
    stingy = ScriptedBudget(Admission(False, 0.05))
    microbatcher = make_microbatcher(api, stingy, max_wait_s=0.3)
    future = microbatcher.submit("starved")
    with pytest.raises(EmbeddingBudgetWaitError, match="EMBEDDINGS_LIMITER_MAX_WAIT_S"):
        future.result(timeout=10)
    assert api.calls == []


def test_closing_during_a_wait_for_budget_hands_the_texts_back(make_microbatcher) -> None:
    api = API()
    microbatcher = make_microbatcher(api, ScriptedBudget(Admission(False, 2.0)))
    future = microbatcher.submit("in line")
    microbatcher.close(timeout_s=5)
    with pytest.raises(MicroBatcherClosed):
        future.result(timeout=1)
    assert api.calls == []


def test_an_unreachable_budget_never_lets_a_call_through(make_microbatcher) -> None:
    api = API()
    down = SharedBudget.from_url(
        "redis://127.0.0.1:1/0", Settings(rpm_limit=60, redis_socket_timeout_s=0.1)
    )
    microbatcher = make_microbatcher(api, down, max_wait_s=0.6)
    future = microbatcher.submit("kept back")
    with pytest.raises(EmbeddingBudgetWaitError, match="unreachable"):
        future.result(timeout=10)
    assert api.calls == []


class CountingBudget:
    """A shared budget that counts the calls it admitted."""

    def __init__(self, budget: SharedBudget) -> None:
        self.budget = budget
        self.admitted = 0

    def count_tokens(self, model: str, texts: list[str]) -> int:
        return self.budget.count_tokens(model, texts)

    def try_acquire(
        self, model: str, tokens: int, lane: str = "interactive", *, serves_bulk: bool = False
    ) -> Admission:
        admission = self.budget.try_acquire(model, tokens)
        self.admitted += admission.admitted
        return admission

    def report(self, model: str, **kwargs: object) -> bool:
        return self.budget.report(model, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.budget.close()


def test_the_split_calls_that_isolate_a_rejected_text_are_admitted_by_the_budget(
    make_microbatcher,
) -> None:
    api = API(reject="bad")
    budget = CountingBudget(_shared_budget(rpm_limit=6000))
    microbatcher = make_microbatcher(api, budget, pool_size=1)
    texts = ["a", "b", "c", "bad", "e", "f", "g", "h"]
    futures = [microbatcher.submit(text) for text in texts]
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(timeout=10))
        except EmbeddingAPIError as exc:
            outcomes.append(exc.status_code)
    assert outcomes == [[1.0, 1.0]] * 3 + [400] + [[1.0, 1.0]] * 4
    # The whole call, then halves until "bad" failed alone: every one of them was admitted.
    assert len(api.calls) > 2 and api.calls[0] == texts
    assert budget.admitted == len(api.calls)


def test_a_split_call_the_budget_keeps_waiting_becomes_a_retry_not_an_unmetered_call(
    make_microbatcher,
) -> None:
    api = API(reject="bad")
    # The whole call is admitted; the halves are asked to wait a minute.
    budget = ScriptedBudget(Admission(False, 60.0), first=(Admission(True, 0.0),))
    microbatcher = make_microbatcher(api, budget, max_wait_s=5.0, pool_size=1)
    texts = ["a", "b", "c", "bad", "e", "f", "g", "h"]
    futures = [microbatcher.submit(text) for text in texts]
    for future in futures:
        with pytest.raises(EmbeddingBudgetWaitError) as caught:
            future.result(timeout=10)
        assert caught.value.retry_after_s == 60.0
    assert api.calls == [texts]
    assert budget.asked == 3  # the whole call, then each half once
