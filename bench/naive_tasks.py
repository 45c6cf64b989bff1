"""The naive baseline: a plain Celery task that makes one API call for its one text.

A separate app on purpose, so the product's app and settings stay untouched. It keeps
Celery's defaults (prefork pool unless told otherwise, JSON results with float lists) and
reads the same ``REDIS_URL`` and ``EMBEDDINGS_*`` variables as the product.
Start it with ``celery -A bench.naive_tasks worker``.
"""

from __future__ import annotations

import base64
import os
import struct
import threading

import httpx
from celery import Celery

from worker.settings import DEFAULT_REDIS_URL, env_int, env_str

__all__ = ["NAIVE_QUEUE", "NAIVE_TASK", "app", "naive_embed"]

NAIVE_TASK = "bench.naive_embed"
NAIVE_QUEUE = "bench-naive"

_redis_url = env_str("REDIS_URL", DEFAULT_REDIS_URL)
app = Celery("bench_naive", broker=_redis_url, backend=_redis_url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_default_queue=NAIVE_QUEUE,
    broker_connection_retry_on_startup=True,
)

_lock = threading.Lock()
_http: httpx.Client | None = None
_owner_pid = 0


def _client() -> httpx.Client:
    # One client per process, made after the prefork fork; httpx clients are thread-safe.
    global _http, _owner_pid
    with _lock:
        if _http is None or _owner_pid != os.getpid():
            base_url = env_str("EMBEDDINGS_BASE_URL", "http://127.0.0.1:8900/v1")
            key = env_str("EMBEDDINGS_API_KEY", "")
            _http = httpx.Client(
                base_url=base_url.rstrip("/") + "/",
                headers={"Authorization": f"Bearer {key}"} if key else {},
                timeout=30.0,
            )
            _owner_pid = os.getpid()
        return _http


@app.task(name=NAIVE_TASK)
def naive_embed(text: str) -> list[float]:
    """One text, one ``/embeddings`` call, the vector as a list of floats."""
    body: dict[str, object] = {
        "input": [text],
        "model": env_str("EMBEDDINGS_MODEL", "text-embedding-3-small"),
        "encoding_format": "base64",
    }
    dimensions = env_int("EMBEDDINGS_DIMENSIONS", 0)
    if dimensions:
        body["dimensions"] = dimensions
    response = _client().post("embeddings", json=body)
    response.raise_for_status()
    packed = base64.b64decode(response.json()["data"][0]["embedding"])
    return list(struct.unpack(f"<{len(packed) // 4}f", packed))
