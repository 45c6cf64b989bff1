"""``AsyncResultWaiter``: one pub/sub subscription multiplexing many waiting tasks (fakeredis)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import worker
from producers.waiter import AsyncResultWaiter
from worker.errors import EmbeddingAPIError, EmbeddingResultTimeoutError

VECTOR = [0.5, -0.25, 0.125, 1.0, 2.0, -3.0, 0.75, 0.0625]  # exact in float32


def _backend() -> Any:
    return worker.app.backend


def _meta(task_id: str, status: str, result: Any) -> bytes:
    backend = _backend()
    if isinstance(result, BaseException):
        result = backend.prepare_exception(result)
    meta = {"status": status, "result": result, "traceback": None, "children": []}
    meta["task_id"] = task_id
    encoded: bytes = backend.encode(meta).encode()
    return encoded


def _key(task_id: str) -> str:
    key = _backend().get_key_for_task(task_id)
    return key.decode() if isinstance(key, bytes) else key


async def _until(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Yield to the loop until ``condition()`` holds (no fixed sleeps)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def _run(scenario: Callable[[AsyncResultWaiter, Any], Awaitable[None]]) -> None:
    async def main() -> None:
        server = fakeredis.FakeServer()
        waiter = AsyncResultWaiter(
            fakeredis.FakeAsyncRedis(server=server),
            key_for=_key,
            decode=_backend().decode_result,
            poll_s=0.05,
        )
        observer = fakeredis.FakeAsyncRedis(server=server)
        try:
            await scenario(waiter, observer)
        finally:
            await waiter.aclose()
            await observer.aclose()

    asyncio.run(main())


async def _numsub(observer: Any, task_id: str) -> int:
    [(_, count)] = await observer.pubsub_numsub(_key(task_id))
    return int(count)


def test_a_published_result_wakes_its_waiter_and_leaves_no_subscription() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        waiting = asyncio.create_task(waiter.wait(["t1"], timeout_s=5))
        await _until(lambda: _key("t1") in waiter.subscribed_channels)
        await _until_subscribed(redis, "t1")
        await redis.publish(_key("t1"), _meta("t1", "SUCCESS", VECTOR))
        assert await waiting == [VECTOR]
        assert waiter.waiting_keys == frozenset()
        await _until_unsubscribed(redis, "t1")

    _run(scenario)


def test_a_result_stored_before_the_subscription_is_read_from_its_key() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        await redis.set(_key("early"), _meta("early", "SUCCESS", VECTOR))
        assert await waiter.wait(["early"], timeout_s=5) == [VECTOR]

    _run(scenario)


def test_many_tasks_share_one_subscription_and_come_back_in_order() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        ids = [f"t{i}" for i in range(50)]
        waiting = asyncio.create_task(waiter.wait(ids, timeout_s=5))
        for task_id in ids:
            await _until_subscribed(redis, task_id)
        for i, task_id in enumerate(reversed(ids)):
            await redis.publish(_key(task_id), _meta(task_id, "SUCCESS", [float(i)] * 8))
        results = await waiting
        assert [r[0] for r in results] == [float(49 - i) for i in range(50)]
        clients = await redis.pubsub_numsub(*[_key(t) for t in ids])
        assert {count for _, count in clients} == {0}

    _run(scenario)


def test_a_failed_task_re_raises_its_typed_error_as_celery_rebuilds_it() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        error = EmbeddingAPIError("the API answered 400: bad text", 400, "bad text")
        await redis.set(_key("bad"), _meta("bad", "FAILURE", error))
        with pytest.raises(EmbeddingAPIError) as info:
            await waiter.wait(["bad"], timeout_s=5)
        assert info.value.status_code == 400
        assert info.value.api_message == "bad text"
        assert waiter.waiting_keys == frozenset()

    _run(scenario)


def test_a_retry_state_keeps_the_waiter_waiting_until_the_final_result() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        waiting = asyncio.create_task(waiter.wait(["r"], timeout_s=5))
        await _until_subscribed(redis, "r")
        await redis.publish(_key("r"), _meta("r", "RETRY", EmbeddingAPIError("later")))
        await redis.publish(_key("r"), _meta("r", "SUCCESS", VECTOR))
        assert await waiting == [VECTOR]

    _run(scenario)


def test_cancelling_a_wait_empties_the_registry_and_unsubscribes() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        waiting = asyncio.create_task(waiter.wait(["c1", "c2"], timeout_s=30))
        await _until_subscribed(redis, "c2")
        assert waiter.waiting_keys == {_key("c1"), _key("c2")}
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert waiter.waiting_keys == frozenset()
        await _until_unsubscribed(redis, "c1")
        await _until_unsubscribed(redis, "c2")
        await _until(lambda: waiter.subscribed_channels == frozenset())
        # No task of ours is left but the one shared reader (fakeredis runs tasks of its own).
        ours = [t for t in asyncio.all_tasks() if "producers" in _source(t)]
        assert [t.get_name() for t in ours] == ["embedding-result-reader"]

    _run(scenario)


def test_a_timeout_raises_a_typed_timeout_error_and_cleans_up() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        with pytest.raises(EmbeddingResultTimeoutError, match="no result for 1 of 1 texts"):
            await waiter.wait(["slow"], timeout_s=0.05)
        assert waiter.waiting_keys == frozenset()
        await _until_unsubscribed(redis, "slow")

    _run(scenario)


def test_the_timeout_error_is_a_builtin_timeout_error_too() -> None:
    assert issubclass(EmbeddingResultTimeoutError, TimeoutError)


def test_two_waits_on_one_task_share_its_channel_until_both_are_done() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        first = asyncio.create_task(waiter.wait(["shared"], timeout_s=5))
        second = asyncio.create_task(waiter.wait(["shared"], timeout_s=5))
        await _until_subscribed(redis, "shared")
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert await _numsub(redis, "shared") == 1  # the second still listens
        await redis.publish(_key("shared"), _meta("shared", "SUCCESS", VECTOR))
        assert await second == [VECTOR]
        await _until_unsubscribed(redis, "shared")

    _run(scenario)


def _source(task: asyncio.Task[Any]) -> str:
    code = getattr(task.get_coro(), "cr_code", None)
    return code.co_filename if code is not None else ""


async def _until_subscribed(redis: Any, task_id: str) -> None:
    async with asyncio.timeout(5):
        while await _numsub(redis, task_id) < 1:
            await asyncio.sleep(0.001)


async def _until_unsubscribed(redis: Any, task_id: str) -> None:
    async with asyncio.timeout(5):
        while await _numsub(redis, task_id) > 0:
            await asyncio.sleep(0.001)


class SubscribesThatFail(fakeredis.FakeAsyncRedis):
    """A fake Redis whose pub/sub raises ``error`` from the SUBSCRIBEs numbered in ``failing``."""

    failing: frozenset[int] = frozenset()
    error: Exception = RuntimeError(
        "readuntil() called while another coroutine is already waiting for incoming data"
    )
    subscribes = 0
    pubsubs = 0

    def pubsub(self, **kwargs: Any) -> Any:
        pubsub = super().pubsub(**kwargs)
        subscribe = pubsub.subscribe
        owner = self
        owner.pubsubs += 1

        async def counted(*args: Any, **options: Any) -> Any:
            owner.subscribes += 1
            if owner.subscribes in owner.failing:
                raise owner.error
            return await subscribe(*args, **options)

        pubsub.subscribe = counted
        return pubsub


def _run_failing(
    failing: set[int],
    scenario: Callable[[AsyncResultWaiter, Any, SubscribesThatFail], Awaitable[None]],
) -> None:
    async def main() -> None:
        server = fakeredis.FakeServer()
        fake = SubscribesThatFail(server=server)
        fake.failing = frozenset(failing)
        waiter = AsyncResultWaiter(
            fake, key_for=_key, decode=_backend().decode_result, poll_s=0.05, retry_s=0.001
        )
        observer = fakeredis.FakeAsyncRedis(server=server)
        try:
            await scenario(waiter, observer, fake)
        finally:
            await waiter.aclose()
            await observer.aclose()

    asyncio.run(main())


def test_a_later_subscribe_that_fails_is_made_anew_and_the_stored_result_read() -> None:
    # The 502: a SUBSCRIBE that raised after the waiter's first one failed the
    # request although its text was published and embedded.
    async def scenario(waiter: AsyncResultWaiter, redis: Any, fake: SubscribesThatFail) -> None:
        await redis.set(_key("first"), _meta("first", "SUCCESS", VECTOR))
        assert await waiter.wait(["first"], timeout_s=5) == [VECTOR]
        await redis.set(_key("second"), _meta("second", "SUCCESS", [2.0] * 8))
        assert await waiter.wait(["second"], timeout_s=5) == [[2.0] * 8]
        assert fake.pubsubs == 2  # the failed subscription was replaced by a new one
        assert waiter.waiting_keys == frozenset()

    _run_failing({2}, scenario)


def test_a_result_published_after_a_failed_subscribe_reaches_every_waiter() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any, fake: SubscribesThatFail) -> None:
        early = asyncio.create_task(waiter.wait(["early"], timeout_s=5))
        await _until_subscribed(redis, "early")
        late = asyncio.create_task(waiter.wait(["late"], timeout_s=5))
        await _until_subscribed(redis, "late")  # on the new subscription
        await redis.publish(_key("early"), _meta("early", "SUCCESS", VECTOR))
        await redis.publish(_key("late"), _meta("late", "SUCCESS", [3.0] * 8))
        assert await early == [VECTOR]
        assert await late == [[3.0] * 8]
        assert fake.pubsubs == 2
        # (fakeredis keeps a closed connection's channels; Redis drops them.)
        await _until_unsubscribed(redis, "late")
        await _until(lambda: waiter.subscribed_channels == frozenset())

    _run_failing({2}, scenario)


def test_a_subscription_that_cannot_be_made_anew_leaves_waiters_to_their_timeout() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any, fake: SubscribesThatFail) -> None:
        await redis.set(_key("first"), _meta("first", "SUCCESS", VECTOR))
        assert await waiter.wait(["first"], timeout_s=5) == [VECTOR]
        fake.failing = frozenset(range(2, 10_000))
        fake.error = RedisConnectionError("Connection refused")
        with pytest.raises(EmbeddingResultTimeoutError):
            await waiter.wait(["never"], timeout_s=0.2)
        assert fake.subscribes > 3  # the reader kept trying, backing off
        fake.failing = frozenset()
        await redis.set(_key("back"), _meta("back", "SUCCESS", VECTOR))
        assert await waiter.wait(["back"], timeout_s=5) == [VECTOR]

    _run_failing(set(), scenario)


def test_the_waiters_own_channel_is_neither_reported_nor_left() -> None:
    async def scenario(waiter: AsyncResultWaiter, redis: Any) -> None:
        await redis.set(_key("one"), _meta("one", "SUCCESS", VECTOR))
        assert await waiter.wait(["one"], timeout_s=5) == [VECTOR]
        await _until(lambda: waiter.subscribed_channels == frozenset())
        anchors = [c for c in await redis.pubsub_channels() if c.startswith(b"embedding-result")]
        assert len(anchors) == 1  # kept: the connection never goes back to unsubscribed
        await redis.publish(anchors[0], b"")  # a wake-up is not a result, nor a stale channel
        await redis.set(_key("two"), _meta("two", "SUCCESS", VECTOR))
        assert await waiter.wait(["two"], timeout_s=5) == [VECTOR]
        assert await redis.pubsub_channels() == anchors

    _run(scenario)


def test_a_cancel_swallowed_while_subscribing_still_ends_the_wait_at_its_timeout() -> None:
    """redis-py may swallow the cancel of a command it is sending and retry it; the timeout
    scope's one cancel is then spent, and the wait must still end at its deadline."""

    async def scenario(waiter: AsyncResultWaiter, observer: Any) -> None:
        subscribe = waiter._subscribe

        async def swallowing_subscribe(keys: list[str]) -> None:
            # Where the wait's timeout lands; swallowed, as the command is retried.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)
            await subscribe(keys)

        waiter._subscribe = swallowing_subscribe  # type: ignore[method-assign]
        async with asyncio.timeout(5):  # a hung wait fails here with a bare TimeoutError
            with pytest.raises(EmbeddingResultTimeoutError):
                await waiter.wait(["never-finishes"], timeout_s=0.01)
        assert await _numsub(observer, "never-finishes") == 0

    _run(scenario)
