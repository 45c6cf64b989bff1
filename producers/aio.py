"""Enqueue texts and await their vectors from asyncio code, without a thread per waiting text.

::

    from producers import aembed_text, aembed_texts, aenqueue_text

    vector = await aembed_text("What is machine learning?", timeout=30)
    vectors = await aembed_texts(["a", "b"], timeout=60)          # in order
    pending = await aenqueue_text("later")                        # pending.id, await pending.get()

The same checks, errors and ``lane=`` as the synchronous functions, over the same core
(``producers.core``). Waiting costs no thread: the coroutines of one loop share one Redis
subscription (``producers.waiter.AsyncResultWaiter``). Publishing, which kombu cannot do
from asyncio, runs the Celery layer's publish (a chunk per ``MULTI``/``EXEC`` on Redis,
else a message a text) in a small thread pool; failover waits are spent on the loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.exceptions import OperationalError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from producers import core
from producers.client import (
    DEFAULT_WAIT_TIMEOUT_S,
    EMBED_TEXT_TASK,
    ENQUEUE_CHUNK_SIZE,
    check_list_size,
    producer_settings,
    publish_id_chunks,
    publish_retry_policy,
    publish_waits,
    queue_error,
    reprs_in,
)
from producers.lanes import LANE_INTERACTIVE, check_lane
from producers.waiter import AsyncResultWaiter
from worker.celery_app import app as default_app
from worker.celery_ext import bulk_publish
from worker.errors import (
    EmbeddingConfigError,
    EmbeddingPartialEnqueueError,
    EmbeddingQueueUnavailableError,
)
from worker.names import queue_for_lane
from worker.redis_client import REDIS_SCHEMES, async_redis_from_url, without_backend_class
from worker.validation import TokenLimit, token_limit, validate_text, validate_texts

__all__ = [
    "DEFAULT_PUBLISH_THREADS",
    "AsyncEmbeddingResult",
    "AsyncProducer",
    "aembed_text",
    "aembed_texts",
    "aenqueue_text",
    "aenqueue_texts",
    "redis_for_url",
    "result_redis",
]

# Enough to keep one Redis busy with LPUSHes; more would only contend for the GIL with the
# event loop they serve.
DEFAULT_PUBLISH_THREADS = 4
# Texts one publishing job sends on one pooled connection before the next job's turn, so a
# 2,048-text request does not hold every thread while one-text requests queue behind it.
PUBLISH_CHUNK = 64

# How the producers' Redis connections are named in ``CLIENT LIST``.
CLIENT_NAME = "embedding-producer"

_shared_executor: ThreadPoolExecutor | None = None

# Injectable for tests; a publish waits here, on the loop, through a Sentinel failover.
_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


def _publish_executor() -> ThreadPoolExecutor:
    global _shared_executor
    if _shared_executor is None:
        _shared_executor = ThreadPoolExecutor(
            max_workers=DEFAULT_PUBLISH_THREADS, thread_name_prefix="embedding-publish"
        )
    return _shared_executor


class AsyncEmbeddingResult:
    """An enqueued text: its task ``id``, and ``await get(timeout)`` for its vector."""

    __slots__ = ("_producer", "id")

    def __init__(self, task_id: str, producer: AsyncProducer) -> None:
        self.id = task_id
        self._producer = producer

    def __repr__(self) -> str:
        return f"<AsyncEmbeddingResult {self.id}>"

    async def get(self, timeout: float = DEFAULT_WAIT_TIMEOUT_S) -> list[float]:
        """Wait up to ``timeout`` seconds for the vector; a failed text re-raises its error."""
        vectors = await self._producer.wait([self.id], timeout=timeout)
        vector: list[float] = vectors[0]
        return vector


class AsyncProducer:
    """The async producer side of one Celery app, for one event loop.

    ``app`` defaults to the project's ``worker.app``. ``redis`` (a ``redis.asyncio.Redis``
    on the result backend's database) defaults to one built from the app's result backend
    URL; the producer owns it and closes it in :meth:`aclose`. ``executor`` defaults to the
    process's shared pool of ``DEFAULT_PUBLISH_THREADS`` publishing threads.
    """

    def __init__(
        self,
        app: Celery | None = None,
        *,
        redis: Redis | None = None,
        executor: ThreadPoolExecutor | None = None,
        max_text_chars: int | None = None,
    ) -> None:
        self.app = app or default_app
        backend = self.app.backend
        if not hasattr(backend, "get_key_for_task"):
            raise EmbeddingConfigError(
                "the result backend (EMBEDDINGS_RESULT_BACKEND_URL or REDIS_URL) must be Redis "
                "for async producers, got "
                f"{type(backend).__name__}"
            )
        self._executor = executor or _publish_executor()
        self._max_chars = max_text_chars
        self.waiter = AsyncResultWaiter(
            redis if redis is not None else result_redis(self.app),
            key_for=lambda task_id: core.as_str(backend.get_key_for_task(task_id)),
            decode=backend.decode_result,
            subscribe_waits=publish_waits(self.app),
        )

    @property
    def max_text_chars(self) -> int:
        """The longest text accepted, in characters (``EMBEDDINGS_MAX_TEXT_CHARS``)."""
        if self._max_chars is None:
            self._max_chars = producer_settings().max_text_chars
        return self._max_chars

    def _tokens(self, model: str | None) -> TokenLimit | None:
        # EMBEDDINGS_MAX_INPUT_TOKENS and the model's encoding (worker.validation).
        return token_limit(producer_settings(), model)

    async def enqueue_text(
        self, text: str, *, model: str | None = None, lane: str = LANE_INTERACTIVE
    ) -> AsyncEmbeddingResult:
        """Check ``text`` and ``lane``, and enqueue it as one task; if either is bad, nothing."""
        checked = validate_text(text, max_chars=self.max_text_chars, tokens=self._tokens(model))
        return (await self._publish([checked], model, check_lane(lane)))[0]

    async def enqueue_texts(
        self, texts: Iterable[str], *, model: str | None = None, lane: str = LANE_INTERACTIVE
    ) -> list[AsyncEmbeddingResult]:
        """Check every text and ``lane``, then enqueue each text as its own task, in order."""
        checked = validate_texts(texts, max_chars=self.max_text_chars, tokens=self._tokens(model))
        return await self._publish(checked, model, check_lane(lane))

    async def embed_text(
        self,
        text: str,
        *,
        model: str | None = None,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,
        lane: str = LANE_INTERACTIVE,
    ) -> list[float]:
        """Enqueue ``text`` in ``lane`` and await its vector for up to ``timeout`` seconds."""
        checked = validate_text(text, max_chars=self.max_text_chars, tokens=self._tokens(model))
        vectors = await self.embed_texts_checked([checked], model=model, timeout=timeout, lane=lane)
        return vectors[0]

    async def embed_texts(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        timeout: float = DEFAULT_WAIT_TIMEOUT_S,
        lane: str = LANE_INTERACTIVE,
    ) -> list[list[float]]:
        """Enqueue ``texts`` one task each in ``lane``; await all vectors, in order, in time.

        ``timeout`` counts from the call, publishing included; past it,
        ``EmbeddingResultTimeoutError`` names every text's task id (``task_ids``), left
        queued. At most ``EMBEDDINGS_MAX_TEXTS_PER_CALL`` texts (2,048), as ``embed_texts``.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        checked = validate_texts(texts, max_chars=self.max_text_chars, tokens=self._tokens(model))
        check_list_size(len(checked), "aembed_texts")
        left = deadline - asyncio.get_running_loop().time()
        return await self.embed_texts_checked(checked, model=model, timeout=left, lane=lane)

    async def embed_texts_checked(
        self,
        texts: Sequence[str],
        *,
        model: str | None,
        timeout: float,
        lane: str = LANE_INTERACTIVE,
    ) -> list[list[float]]:
        """:meth:`embed_texts` for texts the caller already passed through validation.

        ``lane`` is still checked here, before anything is enqueued, even for no texts.
        """
        lane = check_lane(lane)
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = await self._publish(texts, model, lane)
        return await self.wait([p.id for p in pending], timeout=max(0.0, deadline - loop.time()))

    async def wait(self, task_ids: Sequence[str], *, timeout: float) -> list[Any]:
        """The results of ``task_ids`` in order; a failed task re-raises its typed error."""
        return await self.waiter.wait(task_ids, timeout)

    async def aclose(self) -> None:
        """Close the result subscription and its Redis connections."""
        await self.waiter.aclose()

    async def _publish(
        self, texts: Sequence[str], model: str | None, lane: str
    ) -> list[AsyncEmbeddingResult]:
        task_ids = core.fresh_ids(len(texts))
        messages = list(zip(task_ids, texts, strict=True))
        if bulk_publish.supports_bulk_publish(self.app):
            await self._publish_chunks(messages, model, lane)
        else:
            # Neither plain Redis nor Sentinel: no failover to wait out, one attempt.
            loop = asyncio.get_running_loop()
            jobs = core.chunked(messages, PUBLISH_CHUNK)
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._executor, _publish, self.app, job, model, lane)
                    for job in jobs
                )
            )
        return [AsyncEmbeddingResult(task_id, self) for task_id in task_ids]

    async def _publish_chunks(
        self, messages: list[tuple[str, str]], model: str | None, lane: str
    ) -> None:
        """``ENQUEUE_CHUNK_SIZE`` messages a transaction, in order, through a failover.

        ``core.Failover`` says when a refused chunk is sent again (the same task ids and
        lane), and from which text: a chunk that fell back to one message per text resumes
        after the texts that went through. The waits are spent on the loop.
        """
        loop = asyncio.get_running_loop()
        plan = core.Failover(publish_waits(self.app))
        size = ENQUEUE_CHUNK_SIZE
        while plan.done < len(messages):
            rest = messages[plan.done : plan.done - plan.done % size + size]
            try:
                await loop.run_in_executor(
                    self._executor, _publish_chunk, self.app, rest, model, lane
                )
                plan.committed(len(rest))
            except EmbeddingQueueUnavailableError as exc:
                # The per-text fallback stopped inside the chunk: the texts before went through.
                sent = exc.not_enqueued_from if isinstance(exc, EmbeddingPartialEnqueueError) else 0
                step = plan.failed(exc, sent)
                if step is None:
                    done = [AsyncEmbeddingResult(i, self) for i, _ in messages[: plan.done]]
                    # Also an EmbeddingQueueFullError when Redis was full.
                    raise core.enqueue_failure(exc, done, len(messages)) from exc
                await _sleep(step.wait_s)


def _publish_chunk(
    app: Celery, messages: list[tuple[str, str]], model: str | None, lane: str
) -> None:
    """Send ``messages`` (``(task_id, text)``) to ``lane`` in one ``MULTI``/``EXEC`` (a thread).

    The bulk path of ``producers.client.enqueue_ids``; a route it cannot send goes one
    message per text (``_publish``), and a failure there says where the chunk stopped.
    """
    task_ids = [task_id for task_id, _ in messages]
    texts = [text for _, text in messages]
    try:
        chunks = publish_id_chunks(
            texts, model=model, task_ids=task_ids, app=app, chunk_size=len(texts), lane=lane
        )
        for _ in chunks:
            pass
    except bulk_publish.BulkPublishUnsupported:
        for sent, message in enumerate(messages):
            try:
                _publish(app, [message], model, lane)
            except EmbeddingQueueUnavailableError as exc:
                # Says where the chunk stopped (not_enqueued_from): _publish_chunks goes on.
                cause = exc.__cause__ or exc
                error = core.partial_enqueue_error(cause, messages[:sent], len(messages))
                raise error from exc.__cause__
    except (OperationalError, RedisError, OSError) as exc:
        raise queue_error(exc, "enqueue the text") from exc


def _publish(
    app: Celery, messages: Sequence[tuple[str, str]], model: str | None, lane: str
) -> None:
    """Send one task message per ``(task_id, text)`` to ``lane`` (``publish_each``)."""
    try:
        bulk_publish.publish_each(
            app,
            EMBED_TEXT_TASK,
            core.calls([text for _, text in messages], model),
            task_ids=[task_id for task_id, _ in messages],
            reprs=reprs_in(lane),
            queue=queue_for_lane(lane),
            retry_policy=publish_retry_policy(),
        )
    except (OperationalError, RedisError, OSError) as exc:
        raise queue_error(exc, "enqueue the text") from exc


def result_redis(app: Celery) -> Redis:
    """A ``redis.asyncio.Redis`` on ``app``'s result backend database."""
    return redis_for_url(str(app.conf.result_backend or ""), app)


def redis_for_url(url: str, app: Celery) -> Redis:
    """A ``redis.asyncio.Redis`` for ``url`` with ``app``'s Redis timeouts.

    Named ``embedding-producer`` in ``CLIENT LIST``. ``module:Class+redis://…`` (a backend
    class before the URL, as ``celeryconfig`` writes it) is read as the URL after the ``+``.
    A ``sentinel://…;…`` URL gives a client of the master the Sentinels name
    ``REDIS_SENTINEL_MASTER`` (``worker.redis_client``), which reconnects to the new master
    after a failover.
    """
    url = without_backend_class(url)  # as celery.app.backends.by_url reads it
    if urlsplit(url).scheme not in REDIS_SCHEMES:
        raise EmbeddingConfigError(
            "async producers need Redis: the broker and result backend URLs (REDIS_URL, "
            "EMBEDDINGS_BROKER_URL, EMBEDDINGS_RESULT_BACKEND_URL) must be redis://, rediss://, "
            "unix:// or sentinel:// URLs"
        )
    conf = app.conf
    return async_redis_from_url(
        url,
        producer_settings(),
        socket_connect_timeout=conf.get("redis_socket_connect_timeout"),
        socket_timeout=conf.get("redis_socket_timeout"),
        health_check_interval=conf.get("redis_backend_health_check_interval") or 0,
        client_name=CLIENT_NAME,
    )


# One producer, hence one result subscription, per running event loop and app.
_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, AsyncProducer]] = (
    weakref.WeakKeyDictionary()
)


def _default(app: Celery | None) -> AsyncProducer:
    """This loop's producer for ``app``; its reader closes its connections at loop shutdown."""
    target = app or default_app
    # A producer's tasks and locks refer to their loop, so a closed loop's entry would
    # never leave the weak dictionary on its own.
    for closed in [loop for loop in _defaults if loop.is_closed()]:
        del _defaults[closed]
    per_loop = _defaults.setdefault(asyncio.get_running_loop(), {})
    producer = per_loop.get(id(target))
    if producer is None or producer.app is not target:
        producer = per_loop[id(target)] = AsyncProducer(target)
    return producer


async def aenqueue_text(
    text: str,
    *,
    model: str | None = None,
    app: Celery | None = None,
    lane: str = LANE_INTERACTIVE,
) -> AsyncEmbeddingResult:
    """Check ``text`` and enqueue it as one task in ``lane``; ``await result.get()`` reads it."""
    return await _default(app).enqueue_text(text, model=model, lane=lane)


async def aenqueue_texts(
    texts: Iterable[str],
    *,
    model: str | None = None,
    app: Celery | None = None,
    lane: str = LANE_INTERACTIVE,
) -> list[AsyncEmbeddingResult]:
    """Check every text first, then enqueue each as its own task in ``lane``, in order."""
    return await _default(app).enqueue_texts(texts, model=model, lane=lane)


async def aembed_text(
    text: str,
    *,
    model: str | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    app: Celery | None = None,
    lane: str = LANE_INTERACTIVE,
) -> list[float]:
    """Enqueue ``text`` in ``lane`` and await its vector for up to ``timeout`` seconds."""
    return await _default(app).embed_text(text, model=model, timeout=timeout, lane=lane)


async def aembed_texts(
    texts: Sequence[str],
    *,
    model: str | None = None,
    timeout: float = DEFAULT_WAIT_TIMEOUT_S,
    app: Celery | None = None,
    lane: str = LANE_INTERACTIVE,
) -> list[list[float]]:
    """Enqueue ``texts`` one task each in ``lane``; await every vector, in order, in time."""
    return await _default(app).embed_texts(texts, model=model, timeout=timeout, lane=lane)
