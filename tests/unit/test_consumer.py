"""The worker consumer publishes task events at most every EVENT_FLUSH_INTERVAL_S."""

from __future__ import annotations

from typing import Any

import pytest

import worker.celery_ext.consumer as consumer_module
from worker.celery_ext.consumer import (
    EVENT_BUFFER_LIMIT,
    EVENT_FLUSH_INTERVAL_S,
    EventBatchingConsumer,
)


class FakeHub:
    """Runs call_soon callbacks on demand and records call_later delays."""

    def __init__(self) -> None:
        self.soon: list[Any] = []
        self.later: list[tuple[float, Any]] = []

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Any) -> None:
        self.later.append((delay, callback))

    def run_soon(self) -> None:
        callbacks, self.soon = self.soon, []
        for callback in callbacks:
            callback()


class FakeDispatcher:
    buffer_limit = 24

    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> EventBatchingConsumer:
    now = [1000.0]
    monkeypatch.setattr(consumer_module.time, "monotonic", lambda: now[0])
    # Only the event-flush state is exercised.
    c = EventBatchingConsumer.__new__(EventBatchingConsumer)
    c.hub = FakeHub()
    c.event_dispatcher = FakeDispatcher()
    c.now = now  # type: ignore[attr-defined]
    return c


def test_the_first_event_after_a_quiet_spell_goes_out_on_the_next_loop_turn(consumer):
    consumer.on_send_event_buffered()
    consumer.hub.run_soon()
    assert consumer.event_dispatcher.flushes == 1
    assert consumer.hub.later == []


def test_events_under_load_wait_for_the_interval_and_go_out_together(consumer):
    consumer.on_send_event_buffered()
    consumer.hub.run_soon()  # flushed at t=1000.0
    consumer.now[0] += 0.03
    for _ in range(50):  # many events, from many threads, before the next flush
        consumer.on_send_event_buffered()
    assert len(consumer.hub.soon) == 1  # scheduled once, not per event
    consumer.hub.run_soon()
    assert consumer.event_dispatcher.flushes == 1
    ((delay, flush),) = consumer.hub.later
    assert delay == pytest.approx(EVENT_FLUSH_INTERVAL_S - 0.03)
    consumer.now[0] += delay
    flush()
    assert consumer.event_dispatcher.flushes == 2
    consumer.on_send_event_buffered()  # the next event schedules a new flush
    assert len(consumer.hub.soon) == 1


def test_the_size_trigger_is_raised_so_timed_flushes_carry_the_batches(consumer):
    consumer.on_send_event_buffered()
    assert consumer.event_dispatcher.buffer_limit == EVENT_BUFFER_LIMIT


def test_buffered_events_are_flushed_when_the_consumer_stops(consumer, monkeypatch):
    stopped = []
    monkeypatch.setattr(consumer_module._CeleryConsumer, "stop", lambda self: stopped.append(1))
    consumer.stop()
    assert consumer.event_dispatcher.flushes == 1 and stopped == [1]


def test_a_flush_that_never_came_is_rescheduled_after_a_while(consumer):
    consumer.on_send_event_buffered()
    consumer.hub.soon.clear()  # lost, as to a hub reset
    consumer.now[0] += 0.05
    consumer.on_send_event_buffered()
    assert consumer.hub.soon == []  # still within the interval: trust the pending flush
    consumer.now[0] += 1.0
    consumer.on_send_event_buffered()
    consumer.hub.run_soon()
    assert consumer.event_dispatcher.flushes == 1
