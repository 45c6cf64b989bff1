"""The semantic search example end to end: ASGI in-process, real Redis, worker and stub."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from examples.semantic_search.app import DOCUMENTS, cosine, create_app
from worker.names import BULK_QUEUE, INTERACTIVE_QUEUE

pytestmark = pytest.mark.integration


def _search(app: Any, *queries: str, k: int = 3) -> list[Any]:
    async def main() -> list[Any]:
        # httpx's ASGI transport does not run the lifespan; the app's own context does.
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://search") as http:
                responses = await asyncio.gather(
                    *(http.get("/search", params={"q": q, "k": k}) for q in queries)
                )
        return [r.json() if r.status_code == 200 else r for r in responses]

    return asyncio.run(main())


def test_a_document_searched_for_by_its_own_text_ranks_first(start_worker, stub, app) -> None:
    start_worker(stub.base_url)
    results = _search(create_app(celery_app=app), DOCUMENTS[3], DOCUMENTS[0], k=3)
    for result, expected in zip(results, (3, 0), strict=True):
        hits = result["hits"]
        assert len(hits) == 3
        assert hits[0]["index"] == expected
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-6)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # The documents were embedded once, though two searches started at the same time. The
    # two queries are documents' own texts: when they wait beside them they share an input.
    assert len(DOCUMENTS) <= stub.stats()["total_inputs"] <= len(DOCUMENTS) + 2


def test_an_empty_query_is_a_400_and_reaches_no_worker(clean_redis, app) -> None:
    [response] = _search(create_app(celery_app=app, timeout_s=5), "   ")
    assert response.status_code == 400
    assert "whitespace-only" in response.json()["detail"]
    assert clean_redis.llen(INTERACTIVE_QUEUE) == clean_redis.llen(BULK_QUEUE) == 0


def test_cosine_is_one_for_parallel_zero_for_orthogonal_and_safe_for_zero_vectors() -> None:
    assert cosine([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 3.0]) == 0.0
    assert cosine([0.0, 0.0], [1.0, 1.0]) == 0.0
