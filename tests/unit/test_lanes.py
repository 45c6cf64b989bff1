"""Lanes at each place a text waits: the broker's queues, the micro-batcher and the budget."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

import fakeredis
import httpx
import pytest

from devstack import wait_for
from tests.unit.test_budget import MODEL, Clock
from tests.unit.test_microbatcher import Recorder
from worker import app as celery_app
from worker.budget import SharedBudget
from worker.celery_ext.config import apply_config
from worker.celery_ext.transport import AtomicFetchChannel
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.errors import EmbeddingConfigError
from worker.microbatcher import MicroBatcher
from worker.names import (
    BULK_QUEUE,
    INTERACTIVE_QUEUE,
    LANE_BULK,
    LANE_INTERACTIVE,
    lane_of_queue,
    queue_for_lane,
)
from worker.settings import Settings
from worker.waiting import Waiting, WaitingTexts, floor_every


def _waiting(text: str, lane: str, since: float = 0.0) -> Waiting:
    return Waiting(text, Future(), since, task_id=f"id-{text}", lane=lane)


# The names


def test_each_lane_has_its_own_queue_and_an_unknown_lane_is_refused_by_name():
    assert queue_for_lane(LANE_INTERACTIVE) == INTERACTIVE_QUEUE
    assert queue_for_lane(LANE_BULK) == BULK_QUEUE
    assert lane_of_queue(INTERACTIVE_QUEUE) == LANE_INTERACTIVE
    assert lane_of_queue(BULK_QUEUE) == LANE_BULK
    assert lane_of_queue(None) == LANE_BULK
    with pytest.raises(ValueError, match="lane must be one of interactive, bulk; got 'urgent'"):
        queue_for_lane("urgent")


# The broker


def test_the_worker_consumes_both_queues_each_routed_only_to_itself():
    apply_config(celery_app, Settings.from_env(environ={}))
    queues = celery_app.amqp.queues
    assert list(queues) == [INTERACTIVE_QUEUE, BULK_QUEUE]
    for name in (INTERACTIVE_QUEUE, BULK_QUEUE):
        assert (queues[name].exchange.name, queues[name].routing_key) == (name, name)
    router = celery_app.amqp.Router()
    assert router.route({"queue": BULK_QUEUE}, "embeddings.embed_text")["queue"].name == BULK_QUEUE
    assert router.route({}, "embeddings.embed_text")["queue"].name == INTERACTIVE_QUEUE
    options = celery_app.conf.broker_transport_options
    assert options["queues_first"] == [INTERACTIVE_QUEUE]
    assert celery_app.conf.worker_prefetch_multiplier == 1


def test_the_interactive_queue_is_polled_first_whatever_order_it_was_added_in():
    channel = AtomicFetchChannel.__new__(AtomicFetchChannel)
    channel.queues_first = (INTERACTIVE_QUEUE,)
    assert channel._ordered([BULK_QUEUE, "other", INTERACTIVE_QUEUE]) == [
        INTERACTIVE_QUEUE,
        BULK_QUEUE,
        "other",
    ]
    assert channel._ordered([BULK_QUEUE]) == [BULK_QUEUE]


# The micro-batcher's queue


def test_an_interactive_text_takes_the_last_bulk_place_and_that_bulk_text_heads_the_next():
    waiting = WaitingTexts(batch_size=4)
    for n in range(6):
        waiting.add(MODEL, _waiting(f"bulk {n}", LANE_BULK, since=n))
    waiting.add(MODEL, _waiting("web", LANE_INTERACTIVE, since=10))
    assert waiting.has_interactive(MODEL)
    first = waiting.pop_batch(MODEL)
    assert first.texts == ["web", "bulk 0", "bulk 1", "bulk 2"]
    assert first.lane == LANE_INTERACTIVE
    second = waiting.pop_batch(MODEL)
    assert second.texts == ["bulk 3", "bulk 4", "bulk 5"]
    assert second.lane == LANE_BULK
    assert not waiting.has_interactive(MODEL) and waiting.pending == 0


def test_while_interactive_texts_keep_coming_every_fifth_batch_is_bulks():
    waiting = WaitingTexts(batch_size=2, floor_every=4)
    for n in range(10):
        waiting.add(MODEL, _waiting(f"bulk {n}", LANE_BULK))
    lanes = []
    for n in range(10):
        waiting.add(MODEL, _waiting(f"web {n}a", LANE_INTERACTIVE))
        waiting.add(MODEL, _waiting(f"web {n}b", LANE_INTERACTIVE))
        batch = waiting.pop_batch(MODEL)
        lanes.append("bulk" if batch.texts[0].startswith("bulk") else "web")
    assert lanes == ["web"] * 4 + ["bulk"] + ["web"] * 4 + ["bulk"]
    # In bulk's turn the head holds no interactive text, so its call asks the budget as bulk.
    turn = WaitingTexts(batch_size=2, floor_every=1)
    for n in range(4):
        turn.add(MODEL, _waiting(f"bulk {n}", LANE_BULK))
        turn.add(MODEL, _waiting(f"web {n}", LANE_INTERACTIVE))
    turn.pop_batch(MODEL)
    assert turn.head(MODEL) == ["bulk 0", "bulk 1"]
    assert not turn.has_interactive(MODEL, turn.head(MODEL))
    assert turn.has_interactive(MODEL)
    # With no bulk text waiting, no turn is owed: interactive texts keep going first.
    only_web = WaitingTexts(batch_size=2, floor_every=1)
    for n in range(4):
        only_web.add(MODEL, _waiting(f"web {n}", LANE_INTERACTIVE))
    only_web.pop_batch(MODEL)
    only_web.add(MODEL, _waiting("bulk late", LANE_BULK))
    assert only_web.head(MODEL) == ["web 2", "web 3"]


def test_a_batch_with_bulk_riders_serves_bulk_so_it_owes_no_bulk_turn():
    waiting = WaitingTexts(batch_size=4, floor_every=1)
    for n in range(12):
        waiting.add(MODEL, _waiting(f"bulk {n}", LANE_BULK))
    for n in range(3):
        waiting.add(MODEL, _waiting(f"web {n}", LANE_INTERACTIVE))
        batch = waiting.pop_batch(MODEL)
        assert batch.texts[0] == f"web {n}" and batch.serves_bulk


def test_texts_sent_back_after_a_429_head_their_own_lanes_in_order():
    waiting = WaitingTexts(batch_size=8)
    waiting.add(MODEL, _waiting("bulk later", LANE_BULK, since=5))
    waiting.add(MODEL, _waiting("web later", LANE_INTERACTIVE, since=6))
    back = [_waiting("bulk a", LANE_BULK), _waiting("web a", LANE_INTERACTIVE)]
    back += [_waiting("bulk b", LANE_BULK)]
    waiting.requeue(MODEL, back)
    assert waiting.head(MODEL) == ["web a", "web later", "bulk a", "bulk b", "bulk later"]
    assert waiting.oldest_since_of(MODEL) == 0.0


def test_an_identical_text_in_both_lanes_is_one_input_at_the_interactive_place():
    waiting = WaitingTexts(batch_size=2)
    waiting.add(MODEL, _waiting("same", LANE_BULK))
    waiting.add(MODEL, _waiting("other", LANE_BULK))
    waiting.add(MODEL, _waiting("bulk 2", LANE_BULK))
    waiting.add(MODEL, _waiting("same", LANE_INTERACTIVE))
    batch = waiting.pop_batch(MODEL)
    assert batch.texts == ["same", "other"]
    assert [w.lane for w in batch.entries["same"]] == [LANE_INTERACTIVE, LANE_BULK]


def test_an_interactive_text_leaves_in_the_next_call_even_behind_a_bulk_backlog():
    """One slot, a held call: 24 bulk texts queue behind it, then one interactive text."""
    recorder = Recorder()
    recorder.gate.clear()  # the first call waits until released
    config = EmbeddingConfig(
        base_url="http://stub.test/v1", api_key="sk-test", encoding_format="float",
        max_retries=0, pool_size=1,
    )  # fmt: skip
    batcher = EmbeddingBatcher(config, transport=httpx.MockTransport(recorder), sleep=lambda s: 0)
    microbatcher = MicroBatcher(batcher, flush_interval_s=0.01)
    try:
        futures = [microbatcher.submit(f"bulk {n}", lane=LANE_BULK) for n in range(8)]
        wait_for(lambda: microbatcher.pending == 0, 5, "the first call to take its 8 texts")
        futures += [microbatcher.submit(f"bulk {n}", lane=LANE_BULK) for n in range(8, 24)]
        web = microbatcher.submit("web text", lane=LANE_INTERACTIVE)
        recorder.gate.set()
        for future in [*futures, web]:
            future.result(timeout=5)
    finally:
        microbatcher.close()
    inputs = [texts for _model, texts in recorder.calls]
    assert inputs[1] == ["web text"] + [f"bulk {n}" for n in range(8, 15)]
    assert inputs[2][0] == "bulk 15"  # the displaced bulk text goes first in the call after
    assert sum(len(call) for call in inputs) == 25 and len(inputs) == 4


# The shared budget


@pytest.fixture
def budgets() -> Callable[..., tuple[SharedBudget, SharedBudget, Clock]]:
    def make(**settings: object) -> tuple[SharedBudget, SharedBudget, Clock]:
        server, clock = fakeredis.FakeServer(), Clock()
        made = [
            SharedBudget(fakeredis.FakeRedis(server=server), Settings(**settings), now_ms=clock)  # type: ignore[arg-type]
            for _ in range(2)
        ]
        return made[0], made[1], clock

    return make


def test_a_bulk_call_yields_while_another_process_has_an_interactive_call_waiting(budgets):
    web, backfill, clock = budgets(rpm_limit=600, limit_headroom=0.0)
    assert backfill.try_acquire(MODEL, 1, LANE_BULK).admitted
    clock.ms += 1
    refused = web.try_acquire(MODEL, 1, LANE_INTERACTIVE)
    assert not refused.admitted and 0 < refused.wait_s <= 0.1
    # Its slot comes; the bulk process asks first, and yields.
    clock.ms += refused.wait_s * 1000
    yielded = backfill.try_acquire(MODEL, 1, LANE_BULK)
    assert not yielded.admitted and yielded.wait_s > 0
    assert web.try_acquire(MODEL, 1, LANE_INTERACTIVE).admitted
    # No interactive call waits any more: bulk takes the next slot.
    clock.ms += 100
    assert backfill.try_acquire(MODEL, 1, LANE_BULK).admitted


def test_bulk_keeps_its_floor_share_when_both_lanes_are_saturated(budgets):
    web, backfill, clock = budgets(rpm_limit=600, limit_headroom=0.0, bulk_floor_share=0.2)
    lanes: list[str] = []
    for _ in range(2_000):  # every 10 ms both ask, interactive first; 10 calls a second
        if web.try_acquire(MODEL, 1, LANE_INTERACTIVE).admitted:
            lanes.append(LANE_INTERACTIVE)
        if backfill.try_acquire(MODEL, 1, LANE_BULK).admitted:
            lanes.append(LANE_BULK)
        clock.ms += 10
    assert 195 <= len(lanes) <= 202  # the limit still holds: 20 s at 10 a second
    assert lanes.count(LANE_BULK) / len(lanes) == pytest.approx(0.2, abs=0.02)


def test_interactive_calls_carrying_bulk_riders_owe_bulk_no_turn(budgets):
    web, backfill, clock = budgets(rpm_limit=600, limit_headroom=0.0, bulk_floor_share=0.2)
    lanes: list[str] = []
    for _ in range(1_000):  # both ask every 10 ms; the web calls carry bulk texts along
        if web.try_acquire(MODEL, 1, LANE_INTERACTIVE, serves_bulk=True).admitted:
            lanes.append(LANE_INTERACTIVE)
        if backfill.try_acquire(MODEL, 1, LANE_BULK).admitted:
            lanes.append(LANE_BULK)
        clock.ms += 10
    assert len(lanes) >= 95 and lanes.count(LANE_BULK) == 0


def test_a_dead_processs_demand_expires_and_bulk_goes_on(budgets):
    web, backfill, clock = budgets(rpm_limit=600, limit_headroom=0.0)
    assert backfill.try_acquire(MODEL, 1, LANE_BULK).admitted
    assert not web.try_acquire(MODEL, 1, LANE_INTERACTIVE).admitted  # then it dies
    clock.ms += 150
    assert not backfill.try_acquire(MODEL, 1, LANE_BULK).admitted
    clock.ms += 1100  # past the demand's margin
    assert backfill.try_acquire(MODEL, 1, LANE_BULK).admitted


def test_without_limits_lanes_write_nothing_to_the_budget(budgets):
    web, backfill, _clock = budgets()
    assert web.try_acquire(MODEL, 1, LANE_INTERACTIVE).admitted
    assert backfill.try_acquire(MODEL, 1, LANE_BULK).admitted
    assert web._client.keys("*") == []


@pytest.mark.parametrize(("share", "every"), [(0.2, 4), (0.5, 1), (1.0, 0), (0.1, 9)])
def test_the_floor_share_is_one_bulk_call_every_n_interactive_ones(share, every):
    assert floor_every(share) == every
    assert floor_every(0.0) > 10**9


@pytest.mark.parametrize("value", ["-0.1", "1.5", "half"])
def test_a_bad_floor_share_fails_at_start_naming_the_variable(value):
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_BULK_FLOOR_SHARE"):
        Settings.from_env({"EMBEDDINGS_BULK_FLOOR_SHARE": value})
