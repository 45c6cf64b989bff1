"""A requeue that a full Redis refuses leaves the message to the sweep; the worker lives.

Found by ``scripts/bench chaos``: with Redis at ``maxmemory`` (``noeviction``), a text whose
result found no room is rejected with requeue, and kombu's requeue is a ``MULTI`` block,
which a full Redis refuses with ``OutOfMemoryError``. That error is not one of kombu's
connection errors, so it escaped the channel's guard and Celery stopped the worker
("Unrecoverable error: server:OutOfMemoryError"): both workers of the chaos run died.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from devstack import wait_for
from tests.integration.faultkit import IGNORE_RESULT_DEL_IN_OUTAGES, RedisServer

pytestmark = [
    pytest.mark.integration,
    IGNORE_RESULT_DEL_IN_OUTAGES,
]

TRANSPORT = "worker.celery_ext.transport:AtomicFetchTransport"
QUEUE = "full-requeue-test"


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", extra_args=["--maxmemory-policy", "noeviction"]) as s:
        yield s


def test_a_requeue_refused_by_a_full_redis_is_dropped_for_the_sweep(small_redis: RedisServer):
    with Connection(small_redis.url, transport=TRANSPORT) as conn:
        queue = Queue(QUEUE, Exchange(QUEUE), QUEUE)
        with conn.Producer() as producer:
            producer.publish({"text": "no room for my result"}, exchange=queue.exchange,
                             routing_key=QUEUE, declare=[queue])  # fmt: skip
        channel = conn.default_channel
        fetched = channel._fetch([(QUEUE, True)])
        assert fetched is not None
        tag = json.loads(fetched[1][0])["properties"]["delivery_tag"]
        with small_redis.client() as client:
            client.config_set("maxmemory", "1")  # full: every MULTI is refused from now on
            channel.basic_reject(tag, requeue=True)  # raised OutOfMemoryError before
            assert client.hexists("unacked", tag), "the copy the sweep redelivers is gone"
            client.config_set("maxmemory", "0")


def test_after_a_result_found_no_room_the_channel_fetches_only_once_redis_has_headroom(
    small_redis: RedisServer,
):
    # Acks free a little memory, enough for Redis to allow the fetch again but not for the
    # result of the text then fetched: it would be embedded, refused and paid for again.
    got: list[object] = []
    with Connection(small_redis.url, transport=TRANSPORT) as conn:
        queue = Queue(QUEUE, Exchange(QUEUE), QUEUE)
        with conn.Producer() as producer:
            producer.publish({"text": "waits for room"}, exchange=queue.exchange,
                             routing_key=QUEUE, declare=[queue])  # fmt: skip
        with (
            small_redis.client() as client,
            conn.Consumer(queue, callbacks=[lambda _body, message: got.append(message)]),
        ):
            used = int(client.info("memory")["used_memory"])
            # Below maxmemory, so Redis allows the fetch; above 90% of it: no headroom.
            client.config_set("maxmemory", str(int(used / 0.95)))
            conn.default_channel.note_results_full()
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=2.5)
            assert got == [] and client.llen(QUEUE) == 1
            client.config_set("maxmemory", "0")
            wait_for(lambda: _drain(conn) or got, 15, "the text to be fetched once there is room")
        assert len(got) == 1


def _drain(conn: Connection) -> bool:
    try:
        conn.drain_events(timeout=0.5)
    except TimeoutError:
        return False
    return True
