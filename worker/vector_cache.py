"""``VectorCache``: vectors already paid for, in a Redis of their own, by content.

The key is a SHA-256 of everything that changes a vector: the API's base URL, the model,
``dimensions`` and the text (not the API key, not ``user``). Values are little-endian
float32, base64-encoded (``worker.vector_codec``), as the project packs vectors everywhere.
Reads and writes take one round trip per call (MGET; a pipeline of SETs with a TTL).

The cache must be able to evict, so it belongs in a Redis with ``maxmemory-policy
allkeys-lru``, not in the broker's (``noeviction``) database. A cache that fails is skipped
for a while, never a text's failure: it logs once and counts ``embeddings_cache_errors``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

import redis

from worker import metrics
from worker.redis_client import bounded_client
from worker.settings import Settings
from worker.vector_codec import pack_vector, unpack_vector

__all__ = [
    "VectorCache",
    "cache_key",
]

KEY_PREFIX = "embeddings:vec:"
# After a failure the cache is left alone this long (seconds), so an outage costs one
# timeout per interval instead of one per call.
_RETRY_AFTER_FAILURE_S = 5.0


def cache_key(base_url: str, model: str, dimensions: int, text: str) -> str:
    """The key of ``text``'s vector from ``model`` at ``base_url`` with ``dimensions``."""
    digest = hashlib.sha256()
    for part in (base_url.rstrip("/"), model, str(dimensions), text):
        encoded = part.encode("utf-8", "surrogatepass")
        # Length-prefixed, so no choice of fields can collide with another.
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return KEY_PREFIX + digest.hexdigest()


def _as_bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode("ascii")


class VectorCache:
    """Vectors by content in the Redis at ``client``; thread-safe. ``clock`` for tests."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._base_url = settings.base_url
        self._dimensions = settings.dimensions
        self._ttl_s = settings.cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._failing = False

    @classmethod
    def from_url(cls, url: str, settings: Settings) -> VectorCache:
        return cls(bounded_client(url, settings), settings)

    def close(self) -> None:
        self._client.close()

    def key(self, model: str, text: str) -> str:
        return cache_key(self._base_url, model, self._dimensions, text)

    def get_many(self, model: str, texts: Sequence[str]) -> list[list[float] | None]:
        """The cached vector of each text, or None: one MGET. All None while it is down."""
        if not texts or not self._usable():
            return [None] * len(texts)
        try:
            found = self._client.mget([self.key(model, text) for text in texts])
        except redis.RedisError as exc:
            self._failed(exc)
            return [None] * len(texts)
        self._recovered()
        vectors = [None if raw is None else unpack_vector(_as_bytes(raw)) for raw in found]
        hits = sum(v is not None for v in vectors)
        metrics.CACHE_HITS.inc(hits)
        metrics.CACHE_MISSES.inc(len(texts) - hits)
        return vectors

    def put_many(self, model: str, vectors: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Store each (text, vector) with the TTL: one pipelined round trip."""
        if not vectors or not self._usable():
            return
        pipe = self._client.pipeline(transaction=False)
        for text, vector in vectors:
            pipe.set(self.key(model, text), pack_vector(vector), ex=self._ttl_s)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            return
        self._recovered()

    def _usable(self) -> bool:
        return self._clock() >= self._down_until

    def _failed(self, exc: redis.RedisError) -> None:
        metrics.CACHE_ERRORS.inc()
        with self._lock:
            self._down_until = self._clock() + _RETRY_AFTER_FAILURE_S
            first, self._failing = not self._failing, True
        if first:
            logging.getLogger(__name__).warning(
                "the vector cache is unreachable (%s: %s); embedding without it",
                type(exc).__name__,
                exc,
            )

    def _recovered(self) -> None:
        if self._failing:
            with self._lock:
                self._failing = False
            logging.getLogger(__name__).warning("the vector cache is reachable again")
