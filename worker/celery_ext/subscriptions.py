"""Subscribe Celery's result consumer to many results in one ``SUBSCRIBE``.

``send_task`` calls ``backend.on_task_call(producer, task_id)`` before it sends a message.
With Celery's Redis result backend that is ``ResultConsumer.consume_from(task_id)``: one
``SUBSCRIBE`` round trip per task, ~60 µs, which alone kept a bulk ``enqueue_texts`` below
the bare rate of one ``LPUSH`` per round trip. ``subscribe_results`` registers a whole
chunk's result channels the way ``consume_from`` registers one (under the consumer's lock,
in its ``subscribed_to``, forgetting any unsubscribe still queued for the key) and sends
them in one ``SUBSCRIBE`` command, so the ``AsyncResult``\\s work exactly as ``send_task``'s
do: ``get()``, ``ResultSet.join_native``, ``ready()``, and the unsubscribe when one is
fulfilled or collected.

Not needed for correctness: Celery subscribes a result when it is waited for and then reads
the stored value. Needed for round trips: a join then sends one ``SUBSCRIBE`` per result
instead of none (tests/integration/test_result_subscriptions.py counts both).

A backend other than Celery's Redis one (or its subclasses: the project's, Sentinel's)
gets ``on_task_call`` per task, as ``send_task`` would do.

Uses ``ResultConsumer._pubsub``, ``_locked``, ``_pending_unsubscribe``, ``subscribed_to``,
``_get_key_for_task`` and ``reconnect_on_error``, and ``celery._state.task_join_will_block``:
checked at import by ``worker.celery_ext.compat``. Written against Celery 5.7.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import _state as celery_state
from celery.backends.redis import ResultConsumer

from worker.celery_ext import compat

__all__ = ["subscribe_results"]

compat.check_once()


def subscribe_results(backend: Any, producer: Any, task_ids: Sequence[str]) -> int:
    """Subscribe ``backend``'s result consumer to ``task_ids``; how many commands it sent.

    Call it before the tasks are sent, as ``send_task`` calls ``on_task_call``, so no
    result can be published before its channel is listened to. Redis: one ``SUBSCRIBE``
    naming every key not yet subscribed (none when all are). Another backend: its own
    ``on_task_call`` per task (the count is then the number of tasks).
    """
    consumer = getattr(backend, "result_consumer", None)
    if not isinstance(consumer, ResultConsumer):
        for task_id in task_ids:
            backend.on_task_call(producer, task_id)
        return len(task_ids)
    if celery_state.task_join_will_block() or not task_ids:
        return 0  # as RedisBackend.on_task_call: inside a worker's task, nothing subscribes
    with consumer._locked():
        if consumer._pubsub is None:
            # What ResultConsumer.start does, without its one-key SUBSCRIBE.
            consumer._pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
        keys = []
        for task_id in task_ids:
            key = consumer._get_key_for_task(task_id)
            consumer._pending_unsubscribe.discard(key)
            if key not in consumer.subscribed_to:
                consumer.subscribed_to.add(key)
                keys.append(key)
        if not keys:
            return 0
        # As _consume_from: a lost connection reconnects and re-subscribes subscribed_to.
        with consumer.reconnect_on_error():
            consumer._pubsub.subscribe(*keys)
    return 1
