"""The Batch API client on a scripted transport: errors, retries and a create never doubled."""

from __future__ import annotations

import json

import httpx
import pytest

from producers.batch_api import BatchClient
from worker.errors import EmbeddingAPIError, EmbeddingServerError


def _client(handler: httpx.MockTransport, waits: list[float]) -> BatchClient:
    return BatchClient("http://api.test/v1", "sk-test", transport=handler, sleep=waits.append,
                       random_source=lambda: 0.5)  # fmt: skip


def test_a_create_whose_answer_was_lost_is_found_not_made_twice() -> None:
    creates: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/batches":
            creates.append(json.loads(request.content))
            return httpx.Response(502, json={"error": {"message": "bad gateway"}})
        if request.method == "GET" and request.url.path == "/v1/batches":
            made = {"id": "batch_1", "input_file_id": "file-1", "status": "validating"}
            return httpx.Response(200, json={"data": [made], "has_more": False})
        return httpx.Response(404)

    waits: list[float] = []
    batch = _client(httpx.MockTransport(handler), waits).create("file-1", {"embed_file_plan": "p"})
    assert batch["id"] == "batch_1"
    assert len(creates) == 1 and creates[0]["endpoint"] == "/v1/embeddings"
    assert creates[0]["completion_window"] == "24h"


def test_a_refused_key_is_an_api_error_at_once_and_a_503_is_retried_with_backoff() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["Authorization"])
        if request.url.path.endswith("/batches/b1"):
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    waits: list[float] = []
    client = _client(httpx.MockTransport(handler), waits)
    with pytest.raises(EmbeddingAPIError) as refused:
        client.check_access()
    assert refused.value.status_code == 401 and "Incorrect API key" in str(refused.value)
    assert waits == []
    with pytest.raises(EmbeddingServerError):
        client.retrieve("b1")
    assert waits == [1.0, 2.0, 4.0]  # jitter at its midpoint
    assert set(calls) == {"Bearer sk-test"}


def test_a_file_is_read_line_by_line_and_a_broken_download_starts_again() -> None:
    answers = iter([httpx.Response(500), httpx.Response(200, content=b'{"a": 1}\n\n{"b": 2}\n')])

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/files/file-9/content"
        return next(answers)

    waits: list[float] = []
    lines = list(_client(httpx.MockTransport(handler), waits).lines("file-9"))
    assert lines == [b'{"a": 1}\n', b'{"b": 2}\n']
    assert len(waits) == 1
