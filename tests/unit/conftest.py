"""Shared fixtures for unit tests: a fake ``/embeddings`` API over ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from worker.embeddings import EmbeddingBatcher, EmbeddingConfig

Handler = Callable[[httpx.Request], httpx.Response]

BASE_URL = "https://api.test/v1"


def vector_for(text: str) -> list[float]:
    """A deterministic 3-d vector per text; every value is exact in float32."""
    return [float(zlib.crc32(text.encode()) % 100_000), float(len(text)), 0.5]


def inputs_of(request: httpx.Request) -> list[str]:
    return list(json.loads(request.content)["input"])


def ok_response(request: httpx.Request, *, reverse: bool = False) -> httpx.Response:
    """A 200 like OpenAI's, honouring the request's ``encoding_format``."""
    body = json.loads(request.content)
    data: list[dict[str, Any]] = []
    for index, text in enumerate(body["input"]):
        vector: Any = vector_for(text)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    if reverse:
        data.reverse()
    tokens = len(body["input"])
    return httpx.Response(
        200,
        json={
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


def error_response(status: int, message: str = "boom", **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"error": {"message": message, "type": "invalid_request_error"}},
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


@pytest.fixture(autouse=True)
def _clean_embeddings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read the environment; a developer's exported variables must not leak in.
    for name in list(os.environ):
        if name.startswith(("EMBEDDINGS_", "CELERY_", "BROKER_")) or name in (
            "OPENAI_API_KEY",
            "REDIS_URL",
        ):
            monkeypatch.delenv(name)


@pytest.fixture
def waits() -> list[float]:
    """The sleeps the client asked for, in order (nothing really sleeps)."""
    return []


@pytest.fixture
def make_batcher(waits: list[float]) -> Iterator[Callable[..., EmbeddingBatcher]]:
    """Build an ``EmbeddingBatcher`` over ``MockTransport(handler)`` with zero jitter."""
    made: list[EmbeddingBatcher] = []

    def make(
        handler: Handler,
        *,
        random: Callable[[], float] = lambda: 0.5,
        clock: Callable[[], float] | None = None,
        **config: Any,
    ) -> EmbeddingBatcher:
        config.setdefault("base_url", BASE_URL)
        config.setdefault("api_key", "sk-test")
        config.setdefault("model", "test-model")
        options: dict[str, Any] = {"sleep": waits.append, "random": random}
        if clock is not None:
            options["clock"] = clock
        batcher = EmbeddingBatcher(
            EmbeddingConfig(**config), transport=httpx.MockTransport(handler), **options
        )
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


@pytest.fixture
def aio_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the asyncio producers took between publish attempts (none really taken)."""
    import producers.aio as aio  # only the tests that ask for it pay for the import

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(aio, "_sleep", sleep)
    return slept


@pytest.fixture
def aio_enqueue() -> Callable[..., list[str]]:
    """Enqueue texts with an ``AsyncProducer`` on ``app`` (results on fakeredis); their ids.

    ``enqueue(app, texts)`` uses the default lane; ``enqueue(app, texts, lane="bulk")`` not.
    """
    import fakeredis

    from producers import AsyncProducer

    def enqueue(app: Any, texts: list[str], **options: Any) -> list[str]:
        async def main() -> list[str]:
            producer = AsyncProducer(app, redis=fakeredis.FakeAsyncRedis())
            try:
                return [result.id for result in await producer.enqueue_texts(texts, **options)]
            finally:
                await producer.aclose()

        return asyncio.run(main())

    return enqueue
