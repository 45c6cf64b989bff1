"""Celery's worker consumer, publishing task events in fewer, larger batches.

Celery buffers task events (received, started, succeeded...) and publishes the buffer as
one ``task.multi`` message, but it schedules that publish for the event loop's very next
turn after each event, and any thread that finds 24 events buffered publishes at once;
threads that find the same full buffer while that publish is on the wire then publish one
or two events each. Under load that is many small publishes on the consumer's loop (the
measurements are in docs/benchmark.md).

Here a flush happens at most every ``EVENT_FLUSH_INTERVAL_S``, and the size trigger is
raised to ``EVENT_BUFFER_LIMIT``: the first event after a quiet spell still goes out on the
loop's next turn, and under load Flower sees events at most that much later, in larger
batches. Buffered events are flushed before the consumer stops. Selected by
``worker_consumer`` (``worker.celery_ext.config``). Written against celery 5.7.0;
``worker.celery_ext.compat`` checks the Celery internals used here.
"""

from __future__ import annotations

import contextlib
import time

from celery.worker.consumer import Consumer as _CeleryConsumer

__all__ = ["EVENT_BUFFER_LIMIT", "EVENT_FLUSH_INTERVAL_S", "EventBatchingConsumer"]

EVENT_FLUSH_INTERVAL_S = 0.1
EVENT_BUFFER_LIMIT = 1000
_STALE_FLUSH_S = 10 * EVENT_FLUSH_INTERVAL_S


class EventBatchingConsumer(_CeleryConsumer):  # type: ignore[misc]
    """``celery.worker.consumer.Consumer`` with rate-limited task-event flushes."""

    _event_flush_pending = False
    _last_event_flush = 0.0
    _event_flush_requested = 0.0

    def on_send_event_buffered(self) -> None:
        """Schedule a flush at most every ``EVENT_FLUSH_INTERVAL_S``, not on every loop turn.

        Adapted from celery 5.7.0 celery/worker/consumer/consumer.py
        Consumer.on_send_event_buffered.
        """
        # Called from the pool threads and the loop thread alike; the flag only saves
        # scheduling twice, and a race costs one extra (harmless) flush.
        dispatcher = self.event_dispatcher
        if dispatcher is not None and dispatcher.buffer_limit < EVENT_BUFFER_LIMIT:
            dispatcher.buffer_limit = EVENT_BUFFER_LIMIT  # a new dispatcher after a reconnect
        # A flush pending for far longer than the interval was lost (say, to a reconnect's
        # hub reset): schedule another rather than leave events to the size trigger.
        now = time.monotonic()
        stale = now - self._event_flush_requested > _STALE_FLUSH_S
        if self.hub and (not self._event_flush_pending or stale):
            self._event_flush_pending = True
            self._event_flush_requested = now
            self.hub.call_soon(self._schedule_event_flush)

    def _schedule_event_flush(self) -> None:
        # On the loop thread, where the hub's timer may be used.
        wait_s = self._last_event_flush + EVENT_FLUSH_INTERVAL_S - time.monotonic()
        if wait_s <= 0:
            self._flush_events_now()
        else:
            self.hub.call_later(wait_s, self._flush_events_now)

    def _flush_events_now(self) -> None:
        self._event_flush_pending = False
        self._last_event_flush = time.monotonic()
        self._flush_events()

    def _flush_buffered_events(self) -> None:
        # A lost event must not stop a shutdown: Flower would only miss a state change.
        with contextlib.suppress(Exception):
            self._flush_events()

    def stop(self) -> None:
        self._flush_buffered_events()
        super().stop()

    def shutdown(self) -> None:
        self._flush_buffered_events()
        super().shutdown()
