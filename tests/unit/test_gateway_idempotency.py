"""The request ledger: a retry reuses the tasks of its first attempt; the pace and timeouts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import fakeredis
import pytest

from gateway.errors import ApiError
from gateway.idempotency import KEY_PREFIX, RequestLedger, request_key
from gateway.pace import Pace, estimated_seconds, timeout_error

TEXTS = ["first secret text", "second secret text", "third"]


def _key(**overrides: Any) -> Any:
    options: dict[str, Any] = {
        "api_key": "gw-key",
        "model": "m",
        "texts": TEXTS,
        "idempotency_key": None,
        "retry_window_s": 600,
        "idempotency_ttl_s": 86_400,
        **overrides,
    }
    return request_key(**options)


class Queue:
    """Stands for the producer: hands out ids, remembers what it enqueued."""

    def __init__(self) -> None:
        self.enqueued: list[list[int]] = []
        self.failed_ids: set[str] = set()
        self.error: BaseException | None = None

    async def enqueue(self, indexes: Sequence[int]) -> list[str]:
        if self.error is not None:
            raise self.error
        self.enqueued.append(list(indexes))
        return [f"task-{len(self.enqueued)}-{i}" for i in indexes]

    async def failed(self, ids: Sequence[str]) -> list[int]:
        return [i for i, task_id in enumerate(ids) if task_id in self.failed_ids]


def _run(ledger: RequestLedger, key: Any, queue: Queue, wait_s: float = 1.0) -> Any:
    return asyncio.run(
        ledger.task_ids(
            key, len(TEXTS), enqueue=queue.enqueue, failed=queue.failed, claim_wait_s=wait_s
        )
    )


@pytest.fixture
def redis() -> Any:
    return fakeredis.FakeAsyncRedis()


def test_a_repeated_request_waits_on_the_first_ones_tasks(redis) -> None:
    ledger, queue = RequestLedger(redis), Queue()
    ids, reused = _run(ledger, _key(), queue)
    again, reused_again = _run(ledger, _key(), queue)
    assert (reused, reused_again) == (0, 3)
    assert again == ids
    assert queue.enqueued == [[0, 1, 2]]


def test_the_record_holds_ids_and_digests_never_a_text_or_key(redis) -> None:
    ledger, queue = RequestLedger(redis), Queue()
    key = _key(idempotency_key="order-17")
    ids, _ = _run(ledger, key, queue)

    async def dump() -> tuple[list[bytes], bytes, int]:
        keys = await redis.keys("*")
        return keys, await redis.get(key.redis_key), await redis.ttl(key.redis_key)

    keys, raw, ttl = asyncio.run(dump())
    assert keys == [key.redis_key.encode()]
    assert key.redis_key.startswith(KEY_PREFIX)
    assert json.loads(raw)["ids"] == ids
    stored = raw.decode() + key.redis_key
    assert not any(secret in stored for secret in [*TEXTS, "gw-key", "order-17"])
    assert 86_000 < ttl <= 86_400


def test_one_idempotency_key_for_another_body_is_a_422(redis) -> None:
    ledger, queue = RequestLedger(redis), Queue()
    _run(ledger, _key(idempotency_key="order-17"), queue)
    other = _key(idempotency_key="order-17", model="another-model")
    with pytest.raises(ApiError) as info:
        _run(ledger, other, queue)
    assert info.value.status_code == 422
    assert info.value.code == "idempotency_key_reused"
    assert queue.enqueued == [[0, 1, 2]]


def test_the_same_idempotency_key_of_another_caller_is_another_record() -> None:
    mine = _key(idempotency_key="order-17")
    theirs = _key(idempotency_key="order-17", api_key="other-key")
    assert mine.redis_key != theirs.redis_key


def test_failed_tasks_are_enqueued_again_and_the_rest_reused(redis) -> None:
    ledger, queue = RequestLedger(redis), Queue()
    ids, _ = _run(ledger, _key(), queue)
    queue.failed_ids = {ids[1]}
    again, reused = _run(ledger, _key(), queue)
    assert reused == 2
    assert again == [ids[0], "task-2-1", ids[2]]
    assert queue.enqueued == [[0, 1, 2], [1]]
    # The record now points at the new task: a third attempt reuses all three.
    queue.failed_ids = set()
    assert _run(ledger, _key(), queue) == (again, 3)


def test_a_failed_enqueue_leaves_no_record_so_a_retry_enqueues(redis) -> None:
    ledger, queue = RequestLedger(redis), Queue()
    queue.error = ConnectionError("broker down")
    with pytest.raises(ConnectionError):
        _run(ledger, _key(), queue)
    queue.error = None
    assert _run(ledger, _key(), queue)[1] == 0
    assert queue.enqueued == [[0, 1, 2]]


def test_an_attempt_polls_while_another_publishes_then_gets_a_409(redis) -> None:
    key = _key()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def claim() -> None:
        await redis.set(key.redis_key, json.dumps({"v": 1, "fp": key.fingerprint}), ex=30)

    asyncio.run(claim())
    queue = Queue()
    with pytest.raises(ApiError) as info:
        _run(RequestLedger(redis, sleep=sleep), key, queue, wait_s=0.5)
    assert info.value.status_code == 409
    assert sum(slept) == pytest.approx(0.5)
    assert queue.enqueued == []


def test_an_attempt_that_polls_gets_the_ids_once_recorded(redis) -> None:
    key = _key()

    async def claim_then_record_on_sleep() -> Any:
        await redis.set(key.redis_key, json.dumps({"v": 1, "fp": key.fingerprint}), ex=30)

        async def sleep(seconds: float) -> None:
            record = {"v": 1, "fp": key.fingerprint, "ids": ["a", "b", "c"]}
            await redis.set(key.redis_key, json.dumps(record), ex=30)

        queue = Queue()
        ledger = RequestLedger(redis, sleep=sleep)
        found = await ledger.task_ids(
            key, 3, enqueue=queue.enqueue, failed=queue.failed, claim_wait_s=5
        )
        return found, queue.enqueued

    assert asyncio.run(claim_then_record_on_sleep()) == ((["a", "b", "c"], 3), [])


def test_a_window_of_zero_switches_records_off() -> None:
    assert _key(retry_window_s=0) is None
    assert _key(idempotency_key="k", idempotency_ttl_s=0) is None
    assert _key(retry_window_s=0, idempotency_key="k") is not None


def test_pace_is_texts_back_over_their_span_within_the_window() -> None:
    now = [100.0]
    pace = Pace(window_s=60, clock=lambda: now[0])
    assert pace.texts_per_s() is None
    pace.record(started=90.0, texts=2048)  # done at 100: 2,048 in 10 s
    assert pace.texts_per_s() == pytest.approx(204.8)
    now[0] = 161.0  # out of the window
    assert pace.texts_per_s() is None


def test_estimates_use_the_measured_pace_or_the_workers() -> None:
    assert estimated_seconds(2048, 0, workers=None, measured_texts_per_s=None) is None
    assert estimated_seconds(2048, 0, workers=0, measured_texts_per_s=None) is None
    assert estimated_seconds(340, 0, workers=1, measured_texts_per_s=None) == pytest.approx(2.0)
    assert estimated_seconds(100, 100, workers=1, measured_texts_per_s=50) == pytest.approx(4.0)


def test_a_timeout_says_no_worker_or_queue_too_deep() -> None:
    none_up = timeout_error(
        timeout_s=60, texts=4, lane="interactive", workers=0, queued=12, texts_per_s=None
    )
    assert (none_up.status_code, none_up.code) == (503, "no_workers")
    deep = timeout_error(
        timeout_s=60, texts=4, lane="bulk", workers=2, queued=30_000, texts_per_s=150.0
    )
    assert (deep.status_code, deep.code) == (503, "queue_too_deep")
    assert "30000 texts, about 200 s of work at the 150 texts/s" in deep.message
    unknown = timeout_error(
        timeout_s=60, texts=4, lane="bulk", workers=2, queued=30, texts_per_s=None
    )
    assert unknown.code == "timeout" and "2 workers answered" in unknown.message


class SlowRedis:
    """A Redis whose commands take a while, counting how many run at once."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.running = 0
        self.peak = 0

    async def _command(self) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.001)
        self.running -= 1

    async def set(self, key: str, value: str, nx: bool = False, ex: int | None = None) -> bool:
        await self._command()
        if nx and key in self.data:
            return False
        self.data[key] = value
        return True

    async def get(self, key: str) -> Any:
        await self._command()
        return self.data.get(key)

    async def delete(self, key: str) -> None:
        await self._command()
        self.data.pop(key, None)


def test_no_more_than_max_commands_run_at_once_however_many_requests() -> None:
    redis = SlowRedis()
    ledger = RequestLedger(redis, max_commands=8)  # type: ignore[arg-type]
    queue = Queue()

    async def main() -> list[Any]:
        keys = [_key(texts=[f"text {i}", "b", "c"]) for i in range(100)]
        return await asyncio.gather(
            *(ledger.task_ids(k, 3, enqueue=queue.enqueue, failed=queue.failed, claim_wait_s=1)
              for k in keys)
        )  # fmt: skip

    results = asyncio.run(main())
    assert len(results) == 100 and all(reused == 0 for _, reused in results)
    assert redis.peak == 8
