"""A small FastAPI app: semantic search over a handful of documents, via the async producers.

    celery -A worker worker                              # workers, with the API configured
    uvicorn examples.semantic_search.app:app --port 8000
    curl 'http://127.0.0.1:8000/search?q=how+do+plants+make+food&k=3'

The documents are embedded once, on the first search; every query is one text through the
queue. One :class:`~producers.AsyncProducer` lives as long as the app (its lifespan), so every
request waits on the same Redis subscription. Similarity is cosine, in pure Python.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from celery import Celery
from fastapi import FastAPI, HTTPException, Query

from producers import AsyncProducer, EmbeddingError, EmbeddingInputError
from worker.validation import validate_text

__all__ = ["DOCUMENTS", "SemanticIndex", "app", "cosine", "create_app"]

DOCUMENTS = (
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "The French Revolution began in 1789 with the storming of the Bastille.",
    "A neural network learns by adjusting weights to reduce its prediction error.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    "Jupiter is the largest planet in the solar system, a gas giant with many moons.",
    "Compound interest means earning interest on previously earned interest.",
)
DEFAULT_TIMEOUT_S = 30.0


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors of the same length, in [-1, 1]; 0 for a zero vector."""
    norms = math.hypot(*a) * math.hypot(*b)
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


class SemanticIndex:
    """``documents`` and their vectors, embedded once through the queue on first use."""

    def __init__(self, documents: Sequence[str], producer: AsyncProducer, timeout_s: float):
        self.documents = list(documents)
        self.producer = producer
        self.timeout_s = timeout_s
        self._vectors: list[list[float]] | None = None
        self._lock = asyncio.Lock()

    async def vectors(self) -> list[list[float]]:
        async with self._lock:  # concurrent first searches embed the documents once
            if self._vectors is None:
                self._vectors = await self.producer.embed_texts(
                    self.documents, timeout=self.timeout_s
                )
            return self._vectors

    async def search(self, query: str, k: int) -> list[dict[str, Any]]:
        """The ``k`` documents most similar to ``query``, best first.

        A bad query raises ``EmbeddingInputError`` before anything is enqueued.
        """
        checked = validate_text(query, max_chars=self.producer.max_text_chars)
        # A TaskGroup: if one side fails, the other is cancelled rather than left running.
        try:
            async with asyncio.TaskGroup() as group:
                documents = group.create_task(self.vectors())
                query_vector = group.create_task(
                    self.producer.embed_text(checked, timeout=self.timeout_s)
                )
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from failed  # the typed error itself
        scored = sorted(
            (
                (cosine(query_vector.result(), vector), i)
                for i, vector in enumerate(documents.result())
            ),
            reverse=True,
        )
        return [{"score": s, "index": i, "text": self.documents[i]} for s, i in scored[:k]]


def create_app(
    documents: Sequence[str] = DOCUMENTS,
    *,
    celery_app: Celery | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FastAPI:
    """The search app over ``documents``, enqueueing through ``celery_app`` (the project's)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        producer = AsyncProducer(celery_app)
        app.state.index = SemanticIndex(documents, producer, timeout_s)
        try:
            yield
        finally:
            await producer.aclose()

    app = FastAPI(title="semantic search example", lifespan=lifespan)

    @app.get("/search")
    async def search(
        q: str = Query(description="the query text"),
        k: int = Query(3, ge=1, le=len(documents), description="how many documents"),
    ) -> dict[str, Any]:
        index: SemanticIndex = app.state.index
        try:
            hits = await index.search(q, k)
        except EmbeddingInputError as exc:
            raise HTTPException(400, str(exc)) from exc
        except EmbeddingError as exc:
            raise HTTPException(503, f"embedding failed: {type(exc).__name__}") from exc
        return {"query": q, "hits": hits}

    return app


app = create_app()
