"""Lanes end to end: real workers, the stub API, a backfill and web-app texts at once.

Nothing here times anything: each test counts what the API embedded between two events, so
a slow machine changes how long they take, not what they assert.
"""

from __future__ import annotations

import time

import pytest
import redis

import producers
from devstack import wait_for
from stubapi.vectors import vector_for
from tests.integration.faultkit import outcomes, wait_all_ready
from tests.integration.harness import queued_texts
from worker.celery_ext.transport import MAX_FETCH
from worker.names import BULK_QUEUE, INTERACTIVE_QUEUE, LANE_BULK

pytestmark = pytest.mark.integration

DIMS = 16
BACKLOG = 2400
POOL_SIZE = 3  # the worker's default connections, so calls in flight at once
BATCH = 8


def _lines(n: int, tag: str) -> list[str]:
    return [f"backfill {tag} line {i}: the quick brown fox" for i in range(n)]


def _backfill(app, n: int, tag: str) -> list:
    return producers.enqueue_texts(_lines(n, tag), app=app, lane=LANE_BULK)


def _done(client: redis.Redis, results: list) -> int:
    keys = [f"celery-task-meta-{r.id}" for r in results]
    return sum(
        1 for chunk in range(0, len(keys), 500) for v in client.mget(keys[chunk : chunk + 500]) if v
    )


def _overtakes(app, stub, client: redis.Redis, backfill: list[str], texts: int):
    """For each web text, how many API inputs were embedded while it waited, and how many
    backfill texts that were still queued at the broker went into a call before its own.

    The stub numbers its calls in the order they end: a web text's wait is every call that
    ended after it was enqueued, up to and including the call that carried it. That is what
    the workers did, whatever delays this process's polling on a busy machine.

    The count starts once ``enqueue_text`` has returned, when the text is in Redis: calls
    that end while this process validates and publishes it are not the worker's doing, and
    on a machine whose cores are all busy this process can be descheduled there for long
    enough that three more calls end. Only a carrier that ended before that (the text served
    while this process was still away) is counted from before the publish.

    The second count does not depend on timing at all. The backfill was enqueued in order and
    is fetched oldest first, so the bulk queue's length right after the publish names the
    backfill texts still at the broker: the last ones. With lanes, a fetch takes the web text
    before any of them, except a fetch that is bulk's turn; behind them, it would follow them
    all.
    """
    paid, overtaken = [], []
    for n in range(texts):
        text = f"web app text {n}"
        calls_before = len(stub.stats()["inputs_per_call"])
        result = producers.enqueue_text(text, app=app)
        calls_enqueued = len(stub.stats()["inputs_per_call"])
        still_queued = backfill[len(backfill) - int(client.llen(BULK_QUEUE)) :]
        vector = result.get(timeout=60)
        assert vector == pytest.approx(vector_for(text, DIMS), rel=1e-6, abs=1e-7)
        carrier = stub.first_call_of(text)
        assert carrier is not None and carrier >= calls_before, (text, carrier, calls_before)
        start = calls_enqueued if carrier >= calls_enqueued else calls_before
        paid.append(sum(stub.stats()["inputs_per_call"][start : carrier + 1]))
        earlier = (stub.first_call_of(line) for line in still_queued)
        overtaken.append(sum(1 for call in earlier if call is not None and call < carrier))
    return paid, overtaken


def test_interactive_texts_overtake_a_backfill_waiting_in_the_queue_and_the_worker(
    start_worker, stub, app, clean_redis
):
    stub.set_latency_ms(50)
    backlog = _backfill(app, BACKLOG, "solo")
    start_worker(stub.base_url)
    wait_for(lambda: stub.stats()["total_inputs"] >= 200, 60, "the backfill to be under way")
    paid, overtaken = _overtakes(app, stub, clean_redis, _lines(BACKLOG, "solo"), 5)
    remaining = queued_texts(clean_redis)
    print(
        f"\nAPI inputs embedded while each web text waited: {paid}; queued backfill texts "
        f"embedded before it: {overtaken}; {remaining} still queued"
    )
    # Only a fetch that is bulk's turn takes queued backfill texts before a web text.
    assert max(overtaken) <= MAX_FETCH
    # A web text waits for a free reservation (a call ending, or two when every fifth fetch
    # is bulk's turn), for the calls in flight, then leaves in the next call, its own: about
    # POOL_SIZE + 4 calls at most, and one more for a worker that a machine with every core
    # busy keeps from running while a call ends (one ends every ~17 ms). Behind the texts
    # queued or reserved before it, it would wait for hundreds.
    assert max(paid) <= BATCH * (POOL_SIZE + 5)
    assert remaining > 0, "the backfill ended before the web texts were measured"
    wait_all_ready(backlog, 120, "the backfill")
    found = outcomes(backlog, _lines(BACKLOG, "solo"))
    assert found["failed"] == [] and found["wrong"] == []


def test_under_a_shared_budget_two_workers_serve_web_texts_first(
    start_worker, stub, app, clean_redis
):
    stub.set_latency_ms(30)
    limit = {"EMBEDDINGS_RPM_LIMIT": "600"}  # 10 calls a second for both workers together
    backlog = _backfill(app, 2400, "budget")
    for name in ("budget-a", "budget-b"):
        start_worker(stub.base_url, limit, name=name)
    wait_for(lambda: stub.stats()["total_inputs"] >= 160, 60, "the backfill to be under way")
    paid, overtaken = _overtakes(app, stub, clean_redis, _lines(2400, "budget"), 5)
    print(
        f"\nunder the budget, API inputs embedded while each web text waited: {paid}; "
        f"queued backfill texts embedded before it: {overtaken}"
    )
    # Each worker's fetch that is bulk's turn.
    assert max(overtaken) <= 2 * MAX_FETCH
    # Each worker may have a call in flight and one admitted; then the web text's call.
    assert max(paid) <= BATCH * 2 * (POOL_SIZE + 1)
    assert queued_texts(clean_redis) > 0, "the backfill ended before the web texts were measured"
    wait_all_ready(backlog, 240, "the backfill")


def test_bulk_keeps_its_floor_share_while_interactive_texts_saturate_the_budget(
    start_worker, stub, app, clean_redis
):
    stub.set_latency_ms(20)
    bulk = _backfill(app, 400, "floor")
    web = producers.enqueue_texts([f"saturating web text {i}" for i in range(1600)], app=app)
    assert clean_redis.llen(INTERACTIVE_QUEUE) == 1600 and clean_redis.llen(BULK_QUEUE) == 400
    start_worker(stub.base_url, {"EMBEDDINGS_RPM_LIMIT": "1200"})
    wait_for(lambda: _done(clean_redis, web) >= 800, 120, "half the web texts")
    bulk_done = _done(clean_redis, bulk)
    print(f"\nwith half the interactive texts done, {bulk_done} of 400 bulk texts were done")
    # The default floor share is a fifth of the calls: about 200 bulk texts by now. Without a
    # floor, none would be: every call would take interactive texts first.
    assert bulk_done >= 100
    wait_all_ready(bulk + web, 180, "every text")


def test_a_worker_killed_mid_run_loses_no_text_of_either_lane(start_worker, stub, app, clean_redis):
    stub.set_latency_ms(60)
    fault = {"BROKER_VISIBILITY_TIMEOUT": "10", "BROKER_UNACKED_RESTORE_INTERVAL": "1"}
    bulk = _backfill(app, 1200, "kill")
    doomed = start_worker(stub.base_url, fault, name="doomed")
    wait_for(lambda: stub.stats()["ok_calls"] >= 10, 60, "the backfill to be under way")
    web_texts = [f"web text before the kill {i}" for i in range(40)]
    web = [producers.enqueue_text(text, app=app) for text in web_texts]
    doomed.kill()
    killed_at = time.monotonic()
    assert clean_redis.hlen("unacked") > 0, "the worker held nothing when it died"
    start_worker(stub.base_url, fault, name="replacement")
    wait_all_ready(bulk + web, 90, "every text after the kill")
    recovered_s = time.monotonic() - killed_at
    print(f"\nall {len(bulk) + len(web)} texts done {recovered_s:.1f}s after the kill")
    for results, texts in ((bulk, _lines(1200, "kill")), (web, web_texts)):
        found = outcomes(results, texts)
        assert found["failed"] == [] and found["wrong"] == []
        assert len(found["ok"]) == len(texts)
