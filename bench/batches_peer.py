"""celery-batches 0.11 as a peer in the load sweep: 8 texts per call, flushed every 100 ms.

A real peer, not an imitation: ``celery_batches.Batches`` buffers the messages in the
worker and hands them to the task as a list, which sends them as one ``/embeddings`` call
and stores each text's vector by hand with ``mark_as_done``, as its documentation shows.
``flush_every=8`` and ``flush_interval=0.1`` match the project's batch size and flush
interval. Results are Celery's default JSON (a list of floats), as the naive task's are.

celery-batches 0.11 pins ``celery<5.7`` and this project needs 5.7, so this module runs only
in ``.venv-batches`` (made by ``bench.sweep``) and imports nothing from the project. Start it
as ``bench.sweep`` does: the prefork pool its documentation assumes, with 3 children so that
up to 3 calls are in flight, like the project's pool of 3 connections::

    .venv-batches/bin/python -m celery -A bench.batches_peer worker --pool=prefork \
        --concurrency=3
"""

from __future__ import annotations

import base64
import os
import struct
import threading
from typing import Any

import httpx
from celery import Celery
from celery_batches import Batches, SimpleRequest

from bench.batches_config import BATCHES_QUEUE, BATCHES_TASK, FLUSH_EVERY, FLUSH_INTERVAL_S

__all__ = ["PREFETCH_MULTIPLIER", "app", "batches_embed"]

# celery-batches' docs: concurrency × prefetch multiplier must exceed flush_every, or a
# batch never fills. A message stays unacked until a child accepts its batch, so 3 × 16 = 48
# covers the filling buffer (8) and five full batches waiting for a child.
PREFETCH_MULTIPLIER = 16

_redis_url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
app = Celery("bench_batches", broker=_redis_url, backend=_redis_url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_default_queue=BATCHES_QUEUE,
    worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
    broker_connection_retry_on_startup=True,
)

_lock = threading.Lock()
_http: httpx.Client | None = None
_owner_pid = 0


def _client() -> httpx.Client:
    # One keep-alive client per pool child, made after the fork (a parent's socket is not
    # the child's to reuse).
    global _http, _owner_pid
    with _lock:
        if _http is None or _owner_pid != os.getpid():
            base_url = os.environ.get("EMBEDDINGS_BASE_URL", "http://127.0.0.1:8900/v1")
            key = os.environ.get("EMBEDDINGS_API_KEY", "")
            _http = httpx.Client(
                base_url=base_url.rstrip("/") + "/",
                headers={"Authorization": f"Bearer {key}"} if key else {},
                timeout=30.0,
            )
            _owner_pid = os.getpid()
        return _http


def _embed(texts: list[str]) -> list[list[float]]:
    """One ``/embeddings`` call for ``texts``; the vectors in input order."""
    body: dict[str, Any] = {
        "input": texts,
        "model": os.environ.get("EMBEDDINGS_MODEL", "text-embedding-3-small"),
        "encoding_format": "base64",
    }
    dimensions = int(os.environ.get("EMBEDDINGS_DIMENSIONS", "0") or 0)
    if dimensions:
        body["dimensions"] = dimensions
    response = _client().post("embeddings", json=body)
    response.raise_for_status()
    vectors: list[list[float]] = [[] for _ in texts]
    for item in response.json()["data"]:  # ordered by index, never by position
        packed = base64.b64decode(item["embedding"])
        vectors[item["index"]] = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    return vectors


@app.task(base=Batches, name=BATCHES_TASK, flush_every=FLUSH_EVERY, flush_interval=FLUSH_INTERVAL_S)
def batches_embed(requests: list[SimpleRequest]) -> None:
    """Embed each flushed batch in one call and store every request's vector by hand."""
    # A flush takes the whole buffer, which the count trigger keeps at 8 at most; the
    # slicing only guards the API's own limit should that ever change.
    for start in range(0, len(requests), FLUSH_EVERY):
        chunk = requests[start : start + FLUSH_EVERY]
        try:
            vectors = _embed([request.args[0] for request in chunk])
        except Exception as exc:  # every text of the call fails with it, visibly
            for request in chunk:
                # A SimpleRequest has no errbacks for Celery to call.
                app.backend.mark_as_failure(request.id, exc, request=request, call_errbacks=False)
            continue
        for request, vector in zip(chunk, vectors, strict=True):
            app.backend.mark_as_done(request.id, vector, request=request)
