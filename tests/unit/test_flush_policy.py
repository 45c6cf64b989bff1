"""The flush policy: as a pure rule, and in the micro-batcher with a clock that never moves.

With the clock frozen, ``flush_interval_s`` never runs out, so every call seen here left
because of the policy alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import httpx
import pytest

from tests.unit.test_microbatcher import Recorder as _Recorder
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.flush_policy import ArrivalGaps, FlushPolicy, batch_is_due
from worker.microbatcher import MicroBatcher

NAGLE, CONTINUOUS, INTERVAL = FlushPolicy.NAGLE, FlushPolicy.CONTINUOUS, FlushPolicy.INTERVAL
PREDICTIVE = FlushPolicy.PREDICTIVE


class Recorder(_Recorder):
    """Records each call as it starts, then holds it until ``gate`` is set."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.calls.append((body["model"], list(body["input"])))
        self.gate.wait(5)
        data = [{"index": i, "embedding": [1.0, 2.0]} for i, _ in enumerate(body["input"])]
        return httpx.Response(200, json={"data": data, "usage": {"total_tokens": 1}})


def _due(policy: FlushPolicy, **state: object) -> bool:
    defaults: dict[str, object] = {
        "waiting": 1,
        "batch_size": 8,
        "waited_s": 0.0,
        "flush_interval_s": 0.1,
        "in_flight": 0,
    }
    defaults.update(state)
    return batch_is_due(policy, **defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", list(FlushPolicy))
def test_every_policy_sends_a_full_batch_and_one_past_the_interval(policy) -> None:
    assert _due(policy, waiting=8, in_flight=3)
    assert _due(policy, waiting=1, waited_s=0.1, in_flight=3)
    assert _due(policy, waiting=1, in_flight=3, closing=True)
    assert not _due(policy, waiting=0, closing=True)


def test_nagle_sends_at_once_when_idle_and_waits_while_a_call_is_in_flight() -> None:
    assert _due(NAGLE, in_flight=0)
    assert not _due(NAGLE, in_flight=1)
    assert not _due(NAGLE, in_flight=2, waited_s=0.099)


def test_continuous_sends_whenever_a_slot_is_free() -> None:
    assert _due(CONTINUOUS, in_flight=2)


def test_interval_waits_out_the_interval_even_when_idle() -> None:
    assert not _due(INTERVAL, in_flight=0, waited_s=0.099)


def test_predictive_sends_at_once_when_no_text_is_expected() -> None:
    assert _due(PREDICTIVE, in_flight=3, next_arrival_in_s=None)


def test_predictive_waits_only_for_a_text_expected_before_the_deadline() -> None:
    # The deadline is 0.1 s after the oldest text began to wait.
    assert not _due(PREDICTIVE, waited_s=0.05, next_arrival_in_s=0.049, in_flight=0)
    assert _due(PREDICTIVE, waited_s=0.05, next_arrival_in_s=0.05, in_flight=0)
    assert _due(PREDICTIVE, waited_s=0.0, next_arrival_in_s=0.2, in_flight=3)


class TestArrivalGaps:
    def test_nothing_is_expected_before_two_arrivals(self) -> None:
        gaps = ArrivalGaps(quiet_after_s=0.1)
        assert gaps.next_in_s(0.0) is None
        gaps.observe(0.0)
        assert gaps.next_in_s(0.0) is None

    def test_the_next_text_is_expected_one_mean_gap_after_the_last(self) -> None:
        gaps = ArrivalGaps(quiet_after_s=0.1, weight=0.5)
        for now in (0.0, 0.02, 0.04):
            gaps.observe(now)
        assert gaps.mean_gap_s == pytest.approx(0.02)
        assert gaps.next_in_s(0.045) == pytest.approx(0.015)
        assert gaps.next_in_s(0.07) == 0.0  # late: expected any moment
        gaps.observe(0.08)  # a gap of 0.04 moves the mean half way
        assert gaps.mean_gap_s == pytest.approx(0.03)

    def test_a_quiet_spell_drops_the_estimate(self) -> None:
        gaps = ArrivalGaps(quiet_after_s=0.1)
        for now in (0.0, 0.01, 0.02):
            gaps.observe(now)
        gaps.observe(5.0)
        assert gaps.next_in_s(5.0) is None
        gaps.observe(5.03)  # the first gap after a quiet spell is the estimate
        assert gaps.mean_gap_s == pytest.approx(0.03)

    def test_quiet_means_nothing_arrived_for_the_quiet_spell(self) -> None:
        gaps = ArrivalGaps(quiet_after_s=0.1)
        assert gaps.is_quiet(0.0)
        gaps.observe(1.0)
        assert not gaps.is_quiet(1.05)
        assert gaps.is_quiet(1.1)

    def test_bad_parameters_are_refused(self) -> None:
        with pytest.raises(ValueError):
            ArrivalGaps(quiet_after_s=0)
        with pytest.raises(ValueError):
            ArrivalGaps(quiet_after_s=0.1, weight=0)


@pytest.fixture
def make_microbatcher() -> Iterator[Callable[..., MicroBatcher]]:
    made: list[MicroBatcher] = []

    def make(recorder: Recorder, policy: FlushPolicy, pool_size: int = 3) -> MicroBatcher:
        cfg = EmbeddingConfig(
            base_url="http://stub.test/v1",
            api_key="sk-test",
            encoding_format="float",
            max_retries=0,
            pool_size=pool_size,
        )
        batcher = EmbeddingBatcher(cfg, transport=httpx.MockTransport(recorder))
        microbatcher = MicroBatcher(
            batcher, flush_interval_s=10.0, flush_policy=policy, clock=lambda: 0.0
        )
        made.append(microbatcher)
        return microbatcher

    yield make
    for microbatcher in made:
        microbatcher.close(timeout_s=5)


def _wait_for_calls(recorder: Recorder, count: int) -> None:
    deadline = threading.Event()
    for _ in range(200):
        with recorder.lock:
            if len(recorder.calls) >= count:
                return
        deadline.wait(0.01)
    raise AssertionError(f"expected {count} calls, saw {recorder.calls}")


def test_idle_a_lone_text_is_sent_at_once(make_microbatcher) -> None:
    recorder = Recorder()
    microbatcher = make_microbatcher(recorder, NAGLE)
    assert microbatcher.submit("alone").result(timeout=5)
    assert [texts for _, texts in recorder.calls] == [["alone"]]


def test_in_flight_texts_join_the_next_call(make_microbatcher) -> None:
    recorder = Recorder()
    recorder.gate.clear()  # the first call hangs until released
    microbatcher = make_microbatcher(recorder, NAGLE)
    first = microbatcher.submit("first")
    _wait_for_calls(recorder, 1)
    followers = [microbatcher.submit(f"follower {i}") for i in range(5)]
    assert microbatcher.pending == 5  # two slots are free, yet they wait for the next call
    recorder.gate.set()
    assert first.result(timeout=5) and all(f.result(timeout=5) for f in followers)
    assert [texts for _, texts in recorder.calls] == [
        ["first"],
        [f"follower {i}" for i in range(5)],
    ]


def test_in_flight_a_full_batch_leaves_at_eight(make_microbatcher) -> None:
    recorder = Recorder()
    recorder.gate.clear()
    microbatcher = make_microbatcher(recorder, NAGLE)
    microbatcher.submit("first")
    _wait_for_calls(recorder, 1)
    batch = [microbatcher.submit(f"t{i}") for i in range(9)]
    _wait_for_calls(recorder, 2)  # the first call is still held: the 8 left because full
    assert microbatcher.pending == 1
    recorder.gate.set()
    assert all(f.result(timeout=5) for f in batch)
    assert [len(texts) for _, texts in recorder.calls] == [1, 8, 1]


def test_continuous_sends_into_a_free_slot_while_a_call_is_in_flight(make_microbatcher) -> None:
    recorder = Recorder()
    recorder.gate.clear()
    microbatcher = make_microbatcher(recorder, CONTINUOUS)
    microbatcher.submit("first")
    _wait_for_calls(recorder, 1)
    microbatcher.submit("second")
    _wait_for_calls(recorder, 2)
    recorder.gate.set()
    assert [texts for _, texts in recorder.calls] == [["first"], ["second"]]


def test_interval_keeps_a_lone_text_waiting_until_the_interval(make_microbatcher) -> None:
    recorder = Recorder()
    microbatcher = make_microbatcher(recorder, INTERVAL)
    future = microbatcher.submit("patient")
    assert not future.done()
    assert recorder.calls == []
    microbatcher.close(timeout_s=5)  # closing sends what waits
    assert future.result(timeout=5)


class ManualClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_predictive() -> Iterator[Callable[..., tuple[MicroBatcher, ManualClock]]]:
    made: list[MicroBatcher] = []

    def make(recorder: Recorder) -> tuple[MicroBatcher, ManualClock]:
        cfg = EmbeddingConfig(
            base_url="http://stub.test/v1",
            api_key="sk-test",
            encoding_format="float",
            max_retries=0,
        )
        batcher = EmbeddingBatcher(cfg, transport=httpx.MockTransport(recorder))
        clock = ManualClock()
        microbatcher = MicroBatcher(
            batcher, flush_interval_s=0.1, flush_policy=PREDICTIVE, clock=clock
        )
        made.append(microbatcher)
        return microbatcher, clock

    yield make
    for microbatcher in made:
        microbatcher.close(timeout_s=5)


def _submit_at(
    microbatcher: MicroBatcher, clock: ManualClock, times: list[float], prefix: str
) -> list[Future[list[float]]]:
    futures = []
    for i, now in enumerate(times):
        clock.now = now
        futures.append(microbatcher.submit(f"{prefix}{i}"))
    return futures


def test_predictive_idle_a_lone_text_is_sent_at_once(make_predictive) -> None:
    recorder = Recorder()
    microbatcher, _clock = make_predictive(recorder)
    assert microbatcher.submit("alone").result(timeout=5)
    assert [texts for _, texts in recorder.calls] == [["alone"]]


def test_predictive_texts_expected_before_the_deadline_join_one_call(make_predictive) -> None:
    """A text every 20 ms: the batch leaves with the text after which none fits the 100 ms."""
    recorder = Recorder()
    microbatcher, clock = make_predictive(recorder)
    first = microbatcher.submit("first")  # nothing expected yet: leaves at once
    _wait_for_calls(recorder, 1)
    # 20 ms gaps: a batch opened at 0.02 has its deadline at 0.12. Each text expects the
    # next 20 ms later; the one of 0.10 expects it at 0.12, too late to join, so the
    # batch leaves with it, five texts, without waiting for the deadline.
    waiting = _submit_at(microbatcher, clock, [0.02, 0.04, 0.06, 0.08], "t")
    assert microbatcher.pending == 4  # the clock stands still: only the policy can send
    waiting += _submit_at(microbatcher, clock, [0.10], "last")
    _wait_for_calls(recorder, 2)
    assert first.result(timeout=5) and all(f.result(timeout=5) for f in waiting)
    assert [texts for _, texts in recorder.calls] == [
        ["first"],
        ["t0", "t1", "t2", "t3", "last0"],
    ]


def test_predictive_forgets_quiet_models_so_model_names_cannot_grow_memory(
    make_predictive,
) -> None:
    recorder = Recorder()
    microbatcher, clock = make_predictive(recorder)
    for i in range(200):
        clock.now = i * 1.0  # each model quiet by the time the next arrives
        microbatcher.submit("text", model=f"model-{i}")
    assert len(microbatcher._arrivals) <= 64
    microbatcher.close(timeout_s=5)
    assert len(recorder.calls) == 200


def test_predictive_a_full_batch_leaves_at_eight(make_predictive) -> None:
    recorder = Recorder()
    microbatcher, clock = make_predictive(recorder)
    microbatcher.submit("first")
    _wait_for_calls(recorder, 1)
    # 1 ms gaps: the deadline is far off, so the batch leaves only because it is full.
    batch = _submit_at(microbatcher, clock, [0.001 * (i + 1) for i in range(9)], "t")
    _wait_for_calls(recorder, 2)
    assert microbatcher.pending == 1
    microbatcher.close(timeout_s=5)  # closing sends the ninth
    assert all(f.result(timeout=5) for f in batch)
    assert [len(texts) for _, texts in recorder.calls] == [1, 8, 1]
