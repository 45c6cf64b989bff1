"""A retried request waits on the tasks its first attempt enqueued, instead of enqueueing again.

OpenAI clients retry a 503 or a timeout (openai-python twice by default). Each attempt used to
enqueue its texts anew: one ``embeddings.create`` of 4 texts with no worker up left 12
messages queued, each paid for once a worker came. Now each request that enqueues records
its task ids in Redis, under a key derived from the request, for a while (its *window*):

- **By content**: the caller's API key, the model and the texts, in order. A request equal
  to one still in its window (``GATEWAY_RETRY_WINDOW_S``) waits on that request's tasks.
- **By ``Idempotency-Key``**, when the header is sent: the caller's API key and the header
  name the request for ``GATEWAY_IDEMPOTENCY_TTL_S``. The same header with a different
  body (model or texts) is refused with 422 ``idempotency_key_reused``, as the IETF
  ``Idempotency-Key`` draft says: the request is not retried by clients, because it cannot
  succeed as sent.

A recorded task that has since failed or was revoked is enqueued anew (a retry after a
failure means "try again"); one still queued, running, retrying or done is reused, so a
text is paid for once. Windows are capped at the result backend's ``result_expires``: past
it a finished task's result is gone, and its id would be waited on in vain.

Nothing in Redis holds a text or a key in clear: the Redis key and the stored fingerprint
are SHA-256 digests, and the value holds task ids. Keys live in the result backend's
database under ``KEY_PREFIX``.

Two attempts at once (a client that gave up and retried while the first still waits): the
first claims the key with a short-lived placeholder before it publishes, and the second
polls until the ids are recorded; a placeholder left by a gateway that died while
publishing expires after ``CLAIM_TTL_S``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import ApiError
from worker.errors import EmbeddingQueueUnavailableError

__all__ = [
    "CLAIM_TTL_S",
    "KEY_PREFIX",
    "MAX_COMMANDS",
    "RequestKey",
    "RequestLedger",
    "request_key",
]

KEY_PREFIX = "embedding-gateway:request:"
# How long a claim may stay unresolved: far above the time to publish 2,048 texts.
CLAIM_TTL_S = 30
# Redis commands in flight at once, below redis-py's asyncio pool of 100 connections (the
# gateway's own client of the result backend: the ledger's commands and its MGETs).
MAX_COMMANDS = 64
# A second attempt polls a claimed key this often while the first publishes.
_POLL_S = 0.05
_VERSION = 1

Enqueue = Callable[[Sequence[int]], Awaitable[list[str]]]
FailedIndexes = Callable[[Sequence[str]], Awaitable[list[int]]]


@dataclass(frozen=True)
class RequestKey:
    """Where a request's task ids are recorded, and what the request was.

    ``redis_key`` names the record; ``fingerprint`` digests the caller, model and texts, so
    an ``Idempotency-Key`` reused for another body is told apart; ``ttl_s`` is the window.
    ``explicit`` is True for an ``Idempotency-Key``.
    """

    redis_key: str
    fingerprint: str
    ttl_s: int
    explicit: bool


def _digest(*parts: str) -> str:
    sha = hashlib.sha256(f"v{_VERSION}".encode())
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        # Length-prefixed: ("ab", "c") and ("a", "bc") never digest alike.
        sha.update(len(data).to_bytes(8, "big"))
        sha.update(data)
    return sha.hexdigest()


def request_key(
    *,
    api_key: str,
    model: str,
    texts: Sequence[str],
    idempotency_key: str | None,
    retry_window_s: int,
    idempotency_ttl_s: int,
) -> RequestKey | None:
    """The record of this request, or None when the relevant window is 0 (switched off)."""
    caller = _digest(api_key)
    fingerprint = _digest(caller, model, *texts)
    if idempotency_key is not None:
        if idempotency_ttl_s <= 0:
            return None
        name = _digest(caller, idempotency_key)
        return RequestKey(f"{KEY_PREFIX}key:{name}", fingerprint, idempotency_ttl_s, True)
    if retry_window_s <= 0:
        return None
    return RequestKey(f"{KEY_PREFIX}body:{fingerprint}", fingerprint, retry_window_s, False)


def _record(fingerprint: str, task_ids: Sequence[str] | None) -> str:
    record: dict[str, Any] = {"v": _VERSION, "fp": fingerprint}
    if task_ids is not None:
        record["ids"] = list(task_ids)
    return json.dumps(record, separators=(",", ":"))


class RequestLedger:
    """Records and finds the task ids of requests, in ``redis`` (the result backend's db).

    At most ``max_commands`` of its Redis commands run at once (``gate``, which callers may
    share for their own commands on the same client): redis-py's asyncio pool refuses a
    command past its 100 connections at once ("Too many connections") rather than wait, and
    256 one-text requests at once answered most of them 503 before this bound.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_commands: int = MAX_COMMANDS,
    ):
        self.redis = redis
        self._sleep = sleep
        self.gate = asyncio.Semaphore(max_commands)

    async def _set(self, key: str, value: str, **options: Any) -> Any:
        async with self.gate:
            return await self.redis.set(key, value, **options)

    async def _get(self, key: str) -> Any:
        async with self.gate:
            return await self.redis.get(key)

    async def _delete(self, key: str) -> None:
        async with self.gate:
            await self.redis.delete(key)

    async def task_ids(
        self,
        key: RequestKey,
        count: int,
        *,
        enqueue: Enqueue,
        failed: FailedIndexes,
        claim_wait_s: float,
    ) -> tuple[list[str], int]:
        """The ids of the request's ``count`` texts, and how many were reused, not enqueued.

        ``enqueue(indexes)`` publishes those texts of the request and returns their ids;
        ``failed(ids)`` says which recorded ids are failed or revoked tasks. Waits up to
        ``claim_wait_s`` for an attempt that is publishing the same request, then 409.
        """
        try:
            return await self._task_ids(key, count, enqueue, failed, claim_wait_s)
        except RedisError as exc:
            raise EmbeddingQueueUnavailableError(
                "could not read or record the request's tasks: Redis is unreachable "
                f"({type(exc).__name__})"
            ) from exc

    async def _task_ids(
        self,
        key: RequestKey,
        count: int,
        enqueue: Enqueue,
        failed: FailedIndexes,
        claim_wait_s: float,
    ) -> tuple[list[str], int]:
        polls_left = math.ceil(claim_wait_s / _POLL_S)
        while True:
            if await self._set(
                key.redis_key, _record(key.fingerprint, None), nx=True, ex=CLAIM_TTL_S
            ):
                return await self._enqueue_all(key, count, enqueue), 0
            raw = await self._get(key.redis_key)
            if raw is None:
                continue  # it expired between the two commands: claim it
            record = json.loads(raw)
            if record.get("fp") != key.fingerprint:
                # Only an Idempotency-Key can collide: a body key is its own fingerprint.
                raise ApiError(
                    422,
                    "This Idempotency-Key was already used with a different request (another "
                    "model or input). Send a new key for a new request.",
                    code="idempotency_key_reused",
                )
            ids = record.get("ids")
            if ids is None:
                if polls_left <= 0:
                    raise ApiError(
                        409,
                        "The same request is being enqueued by another attempt; retry shortly "
                        "and this one will wait on its texts.",
                        code="request_in_progress",
                        headers={"Retry-After": "1"},
                    )
                await self._sleep(_POLL_S)
                polls_left -= 1
                continue
            if len(ids) != count:  # a record from another request shape: never reuse it
                return await self._enqueue_all(key, count, enqueue), 0
            return await self._reuse(key, list(ids), enqueue, failed)

    async def _enqueue_all(self, key: RequestKey, count: int, enqueue: Enqueue) -> list[str]:
        try:
            ids = await enqueue(range(count))
        except BaseException:
            # Nothing recorded: the next attempt enqueues again rather than wait on nothing.
            await self._delete(key.redis_key)
            raise
        await self._set(key.redis_key, _record(key.fingerprint, ids), ex=key.ttl_s)
        return ids

    async def _reuse(
        self, key: RequestKey, ids: list[str], enqueue: Enqueue, failed: FailedIndexes
    ) -> tuple[list[str], int]:
        again = await failed(ids)
        if again:
            for index, task_id in zip(again, await enqueue(again), strict=True):
                ids[index] = task_id
            await self._set(key.redis_key, _record(key.fingerprint, ids), ex=key.ttl_s)
        return ids, len(ids) - len(again)
