"""The producers' sans-IO core: chunks, ids, the failover schedule and partial-enqueue errors.

All pure: every decision is asserted exactly, with no Redis, clock or sleep.
"""

from __future__ import annotations

import pytest
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError

from producers import core
from producers.core import Failover, Resend
from worker.errors import (
    EmbeddingPartialEnqueueError,
    EmbeddingPartialQueueFullError,
    EmbeddingQueueFullError,
    EmbeddingQueueUnavailableError,
    causes,
)

GONE = RedisConnectionError("Connection refused")


def _full() -> OperationalError:
    error = OperationalError("OOM command not allowed")
    error.__cause__ = OutOfMemoryError("OOM command not allowed when used memory > maxmemory")
    return error


def test_chunked_slices_keep_every_item_in_order() -> None:
    items = list(range(1201))
    chunks = list(core.chunked(items, 500))
    assert [len(c) for c in chunks] == [500, 500, 201]
    assert [x for c in chunks for x in c] == items
    assert list(core.chunked([], 500)) == []


def test_chunked_refuses_a_chunk_size_below_one() -> None:
    with pytest.raises(ValueError, match="chunk size must be positive"):
        list(core.chunked([1, 2], 0))


def test_fresh_ids_are_distinct_uuid_strings() -> None:
    ids = core.fresh_ids(50)
    assert len(ids) == len(set(ids)) == 50
    assert all(isinstance(i, str) and len(i) == 36 for i in ids)
    assert core.fresh_ids(0) == []


def test_calls_carry_the_model_only_when_one_is_named() -> None:
    assert core.calls(["a", "b"], None) == [(("a",), {}), (("b",), {})]
    assert core.calls(["a"], "m") == [(("a",), {"model": "m"})]


def test_a_failover_with_no_waits_gives_up_at_the_first_failure() -> None:
    plan = Failover([])
    assert plan.failed(GONE) is None
    assert plan.done == 0


def test_a_failover_resends_from_the_first_uncommitted_item_after_each_wait() -> None:
    plan = Failover([0.2, 0.4, 0.8])
    plan.committed(3)
    assert plan.failed(GONE) == Resend(0.2, 3)
    assert plan.failed(GONE) == Resend(0.4, 3)
    assert plan.failed(GONE) == Resend(0.8, 3)
    assert plan.failed(GONE) is None
    assert plan.done == 3


def test_a_committed_chunk_gives_the_next_failure_the_whole_schedule_again() -> None:
    plan = Failover([0.2, 0.4])
    assert plan.failed(GONE) == Resend(0.2, 0)
    plan.committed(3)
    assert plan.failed(GONE) == Resend(0.2, 3)
    assert plan.failed(GONE) == Resend(0.4, 3)
    assert plan.failed(GONE) is None


def test_items_sent_before_a_failure_count_as_done_but_keep_the_schedule_where_it_was() -> None:
    plan = Failover([0.2, 0.4])
    assert plan.failed(GONE, sent=1) == Resend(0.2, 1)
    assert plan.failed(GONE, sent=2) == Resend(0.4, 3)
    assert plan.failed(GONE, sent=1) is None
    assert plan.done == 4


@pytest.mark.parametrize(
    "error", [_full(), KeyError("a bug"), RedisError("some other answer")], ids=repr
)
def test_an_error_that_is_no_failover_gives_up_at_once_whatever_waits_are_left(
    error: Exception,
) -> None:
    assert Failover([0.2, 0.4]).failed(error) is None


def test_the_retry_rule_is_the_callers() -> None:
    plan = Failover([0.5], retry_if=core.is_unreachable)
    assert plan.failed(EmbeddingQueueFullError("full")) is None
    assert plan.failed(EmbeddingQueueUnavailableError("down")) == Resend(0.5, 0)
    assert not core.is_unreachable(GONE)


def test_causes_walks_cause_then_context_once_each_even_in_a_loop() -> None:
    outer, middle, inner = RuntimeError("outer"), ValueError("middle"), KeyError("inner")
    outer.__cause__, middle.__context__, inner.__context__ = middle, inner, outer
    assert list(causes(outer)) == [outer, middle, inner]
    assert list(causes(None)) == []


def test_queue_error_says_full_for_an_out_of_memory_anywhere_in_the_chain() -> None:
    assert type(core.queue_error(_full(), "enqueue the text")) is EmbeddingQueueFullError
    error = core.queue_error(GONE, "enqueue the text")
    assert type(error) is EmbeddingQueueUnavailableError
    assert str(error) == (
        "could not enqueue the text: the broker is unreachable (Connection refused)"
    )


def test_the_partial_error_names_what_was_enqueued_and_where_the_list_stopped() -> None:
    error = core.partial_enqueue_error(GONE, ["r0", "r1"], 5)
    assert type(error) is EmbeddingPartialEnqueueError
    assert error.enqueued == ["r0", "r1"] and error.not_enqueued_from == 2
    assert str(error) == (
        "could not enqueue the text: the broker is unreachable (Connection refused); "
        "the first 2 of 5 texts were enqueued, none from index 2 on"
    )


@pytest.mark.parametrize(
    "cause", [_full(), EmbeddingQueueFullError("Redis is full")], ids=["raw", "typed"]
)
def test_a_full_redis_makes_the_partial_error_a_queue_full_error_too(
    cause: BaseException,
) -> None:
    error = core.partial_enqueue_error(cause, [], 3)
    assert type(error) is EmbeddingPartialQueueFullError
    assert isinstance(error, EmbeddingQueueFullError) and error.not_enqueued_from == 0
    assert "Redis is full" in str(error)


def test_enqueue_failure_turns_broker_errors_into_the_partial_error_and_leaves_others() -> None:
    bug = KeyError("a bug")
    assert core.enqueue_failure(bug, ["r0"], 2) is bug
    raw = core.enqueue_failure(GONE, ["r0"], 2)
    assert isinstance(raw, EmbeddingPartialEnqueueError) and raw.not_enqueued_from == 1
    consumer = RuntimeError("result consumer gave up")
    consumer.__cause__ = GONE
    assert core.broker_failure(consumer) is GONE
    assert isinstance(core.enqueue_failure(consumer, [], 2), EmbeddingPartialEnqueueError)
    typed = core.queue_error(_full(), "enqueue the text")
    typed.__cause__ = _full()
    assert isinstance(core.enqueue_failure(typed, [], 2), EmbeddingPartialQueueFullError)


def test_only_a_sentinel_broker_gets_failover_waits() -> None:
    sentinels = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"
    assert core.publish_waits(sentinels, 2.0) == core.failover_waits(2.0) == [0.2, 0.4, 0.8, 1.0]
    assert core.publish_waits("redis://127.0.0.1:6379/0", 2.0) == []
    assert core.publish_waits("", 2.0) == []
