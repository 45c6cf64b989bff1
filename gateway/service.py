"""What the gateway needs from the queue, behind one small interface the tests can fake.

:class:`QueueService` is the real one: texts go through the async producers (each input its
own task, so workers batch across requests and gateway replicas) to the request's lane,
queue depth is an ``LLEN`` of a lane's queue, and worker liveness is Celery's broadcast
ping, run in one thread with a short timeout because it blocks. A request with a
``RequestKey`` (``gateway.idempotency``) reuses the tasks of an earlier attempt still in its
window, and records its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Protocol

from celery import Celery, states
from redis.exceptions import RedisError

from gateway.idempotency import RequestKey, RequestLedger
from producers.aio import AsyncProducer, redis_for_url, result_redis
from producers.lanes import LANE_INTERACTIVE, LANES, check_lane
from worker.errors import EmbeddingQueueUnavailableError
from worker.names import queue_for_lane

__all__ = ["EmbeddingService", "Health", "QueueService"]

# A health check hammered by many probes still runs one ping at a time, at most this often.
_PING_CACHE_S = 1.0
# How long a retry waits for an attempt that is still publishing the same request.
_CLAIM_WAIT_S = 10.0


@dataclass(frozen=True)
class Health:
    """Redis reachable; workers that answered the ping (None: not asked); texts queued.

    ``queue_depth`` counts every lane's queue; ``lane_depths`` each lane's (None: unknown).
    """

    redis: bool
    workers: int | None
    queue_depth: int | None
    lane_depths: dict[str, int] | None = None


class EmbeddingService(Protocol):
    """The queue as the gateway sees it."""

    async def embed(
        self,
        texts: Sequence[str],
        *,
        model: str,
        timeout_s: float,
        lane: str,
        request_key: RequestKey | None = None,
        on_reuse: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        """Vectors of already-validated ``texts`` sent in ``lane``, in order.

        With ``request_key``, the tasks of an earlier attempt recorded under it are waited
        on instead of enqueueing the texts again; ``on_reuse`` is told how many were. Raises
        the project's errors, or the ``ApiError`` of a reused ``Idempotency-Key`` (422) or of
        a concurrent attempt (409).
        """
        ...

    async def queue_depth(self, lane: str = LANE_INTERACTIVE) -> int:
        """Texts waiting in ``lane``'s queue; raises ``EmbeddingQueueUnavailableError``."""
        ...

    async def health(self) -> Health: ...

    async def aclose(self) -> None: ...


class QueueService:
    """:class:`EmbeddingService` over a Celery app's Redis broker and result backend."""

    def __init__(self, app: Celery, *, ping_timeout_s: float) -> None:
        self.app = app
        self.producer = AsyncProducer(app)
        self._broker = redis_for_url(str(app.conf.broker_url), app)
        self._results = result_redis(app)
        self.ledger = RequestLedger(self._results)
        expires = app.conf.result_expires
        if isinstance(expires, timedelta):
            expires = expires.total_seconds()
        # A record must not outlive the results it points at (0 or None: kept for ever).
        self._record_cap_s = int(expires) if expires else None
        self._ping_timeout_s = ping_timeout_s
        # Celery's ping blocks for its whole timeout: one thread, and one ping at a time.
        self._ping_executor = ThreadPoolExecutor(1, thread_name_prefix="gateway-ping")
        self._ping_lock = asyncio.Lock()
        self._last_ping: tuple[float, int | None] = (float("-inf"), None)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        model: str,
        timeout_s: float,
        lane: str,
        request_key: RequestKey | None = None,
        on_reuse: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        if request_key is None or not texts:
            return await self.producer.embed_texts_checked(
                texts, model=model, timeout=timeout_s, lane=lane
            )
        if self._record_cap_s is not None and request_key.ttl_s > self._record_cap_s:
            request_key = replace(request_key, ttl_s=self._record_cap_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        async def enqueue(indexes: Sequence[int]) -> list[str]:
            sent = await self.producer.enqueue_texts(
                [texts[i] for i in indexes], model=model, lane=lane
            )
            return [result.id for result in sent]

        task_ids, reused = await self.ledger.task_ids(
            request_key,
            len(texts),
            enqueue=enqueue,
            failed=self._failed,
            claim_wait_s=min(_CLAIM_WAIT_S, timeout_s),
        )
        if on_reuse is not None:
            on_reuse(reused)
        return await self.producer.wait(task_ids, timeout=max(0.0, deadline - loop.time()))

    async def _failed(self, task_ids: Sequence[str]) -> list[int]:
        """Indexes of ``task_ids`` whose stored result is a failure or a revoke."""
        backend = self.app.backend
        async with self.ledger.gate:
            raws = await self._results.mget([backend.get_key_for_task(i) for i in task_ids])
        failed = []
        for index, raw in enumerate(raws):
            if raw is not None:
                meta = backend.decode_result(raw)
                if meta.get("status") in states.PROPAGATE_STATES:
                    failed.append(index)
        return failed

    async def queue_depth(self, lane: str = LANE_INTERACTIVE) -> int:
        queue = queue_for_lane(check_lane(lane))
        try:
            return int(await self._broker.llen(queue))
        except RedisError as exc:
            raise EmbeddingQueueUnavailableError(
                f"could not read the queue's depth: Redis is unreachable ({type(exc).__name__})"
            ) from exc

    async def health(self) -> Health:
        try:
            await self._broker.ping()
            depths = {lane: await self.queue_depth(lane) for lane in LANES}
        except (RedisError, EmbeddingQueueUnavailableError):
            return Health(redis=False, workers=None, queue_depth=None)
        return Health(
            redis=True,
            workers=await self._workers(),
            queue_depth=sum(depths.values()),
            lane_depths=depths,
        )

    async def _workers(self) -> int | None:
        async with self._ping_lock:
            pinged_at, count = self._last_ping
            if time.monotonic() - pinged_at < _PING_CACHE_S:
                return count
            loop = asyncio.get_running_loop()
            try:
                replies: list[Any] = await loop.run_in_executor(self._ping_executor, self._ping)
                count = len(replies)
            except Exception:  # an unreachable broker: report "unknown", not a crash
                count = None
            self._last_ping = (time.monotonic(), count)
            return count

    def _ping(self) -> list[Any]:
        replies: list[Any] = self.app.control.ping(timeout=self._ping_timeout_s)
        return replies

    async def aclose(self) -> None:
        await self.producer.aclose()
        await self._broker.aclose()
        await self._results.aclose()
        self._ping_executor.shutdown(wait=False, cancel_futures=True)
