"""``EmbeddingBatcher``: embed a list of texts in calls of ``batch_size``, run over the pool.

``embed_texts`` and ``embed_text`` share one default batcher per process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from worker.embeddings.client import CallResult, EmbeddingClient
from worker.embeddings.config import EmbeddingConfig
from worker.errors import EmbeddingAPIError, EmbeddingError
from worker.validation import validate_text, validate_texts

__all__ = [
    "EmbedCall",
    "EmbeddingBatcher",
    "EmbeddingResult",
    "embed_text",
    "embed_texts",
    "reset_default_batcher",
]

EmbedCall = Callable[[Sequence[str], str | None], CallResult]
"""One API call of already-validated texts, as ``EmbeddingClient.embed``."""

# Statuses that reject the request's content: splitting the call finds the offending text.
# 401/403/404 concern the key, the model or the URL, and would fail every half alike.
ISOLATABLE_STATUSES = frozenset({400, 413, 422})
_CHUNK_THREADS = 64


@dataclass
class EmbeddingResult:
    """What ``embed_batch`` returns.

    ``embeddings`` are in input order; ``usage`` is summed over calls; ``latency_ms`` is the
    wall time of the whole batch; ``retries`` is the total of in-process retries;
    ``batch_size`` is the number of API calls made (the seed's name), retries not counted.
    """

    embeddings: list[list[float]]
    usage: dict[str, int] = field(default_factory=dict)
    latency_ms: float = 0.0
    retries: int = 0
    batch_size: int = 0


class EmbeddingBatcher:
    """Splits texts into calls of at most ``config.batch_size`` and runs them concurrently.

    Extra keyword arguments (``transport``, ``sleep``, ``random``, ``clock``) go to the
    ``EmbeddingClient`` and exist for tests.
    """

    def __init__(self, config: EmbeddingConfig | None = None, **client_options: Any) -> None:
        self.config = config or EmbeddingConfig()
        self.client = EmbeddingClient(self.config, **client_options)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._owner_pid = 0

    def __repr__(self) -> str:
        return f"EmbeddingBatcher({self.config!r})"

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._owner_pid != os.getpid():
                # Threads do not survive a fork: a child needs executors of its own.
                # More threads than connections on purpose: a chunk must reach the client's
                # pool semaphore, whose timeout raises EmbeddingPoolExhausted, instead of
                # queueing here with no time limit. Threads are started on demand.
                self._executor = ThreadPoolExecutor(
                    max_workers=_CHUNK_THREADS, thread_name_prefix="embeddings-chunk"
                )
                self._owner_pid = os.getpid()
            return self._executor

    def close(self) -> None:
        """Wait for running calls, then close the executor and the HTTP pool."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None and self._owner_pid == os.getpid():
            executor.shutdown(wait=True)
        self.client.close()

    def __enter__(self) -> EmbeddingBatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def embed_batch(self, texts: Sequence[str], model: str | None = None) -> EmbeddingResult:
        """Embed ``texts`` in order; raises the first call's typed error if any call fails."""
        checked = validate_texts(texts, max_chars=self.config.max_text_chars)
        started = time.perf_counter()
        size = self.config.batch_size
        chunks = [checked[i : i + size] for i in range(0, len(checked), size)]
        futures = [self._pool().submit(self.client.embed, chunk, model) for chunk in chunks]
        calls: list[CallResult] = []
        first_error: BaseException | None = None
        for future in futures:
            try:
                calls.append(future.result())
            except EmbeddingError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        usage: dict[str, int] = {}
        for call in calls:
            for key, value in call.usage.items():
                usage[key] = usage.get(key, 0) + value
        return EmbeddingResult(
            embeddings=[vector for call in calls for vector in call.embeddings],
            usage=usage,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            retries=sum(call.retries for call in calls),
            batch_size=len(calls),
        )

    def embed_isolated(
        self, texts: Sequence[str], model: str | None = None, *, embed: EmbedCall | None = None
    ) -> list[list[float] | EmbeddingError]:
        """Embed one call's worth of texts; return a vector or an error for each text.

        When the API rejects the whole call with a 400/413/422 that names no single input,
        the call is split in halves until the offending texts fail alone. ``embed`` makes
        each call instead of ``client.embed`` (the micro-batcher's budget-metered calls).
        """
        try:
            return list((embed or self.client.embed)(texts, model).embeddings)
        except EmbeddingError as exc:
            return self.isolate(texts, model, exc, embed=embed)

    def isolate(
        self,
        texts: Sequence[str],
        model: str | None,
        exc: EmbeddingError,
        *,
        embed: EmbedCall | None = None,
    ) -> list[list[float] | EmbeddingError]:
        """Outcomes of ``texts`` after their whole call failed with ``exc``.

        A 400/413/422 that names no single input is narrowed down by splitting the call,
        each half made by ``embed`` (default ``client.embed``); any other error is every
        text's outcome.
        """
        isolatable = isinstance(exc, EmbeddingAPIError) and exc.status_code in ISOLATABLE_STATUSES
        if not isolatable or len(texts) == 1:
            return [exc] * len(texts)
        middle = len(texts) // 2
        return self.embed_isolated(texts[:middle], model, embed=embed) + self.embed_isolated(
            texts[middle:], model, embed=embed
        )


_default_lock = threading.Lock()
_default_batcher: EmbeddingBatcher | None = None


def _default() -> EmbeddingBatcher:
    global _default_batcher
    with _default_lock:
        if _default_batcher is None:
            _default_batcher = EmbeddingBatcher()
        return _default_batcher


def reset_default_batcher() -> None:
    """Drop the process's default batcher (closing it); the next call builds a new one."""
    global _default_batcher
    with _default_lock:
        batcher, _default_batcher = _default_batcher, None
    if batcher is not None:
        batcher.close()


def _forget_default_in_child() -> None:
    # The lock may have been held by another thread at fork time; a new one is safe.
    global _default_batcher, _default_lock
    _default_lock = threading.Lock()
    _default_batcher = None


os.register_at_fork(after_in_child=_forget_default_in_child)


def embed_texts(texts: Sequence[str], model: str | None = None) -> list[list[float]]:
    """Embed ``texts`` with the process's default batcher; vectors in input order."""
    return _default().embed_batch(texts, model).embeddings


def embed_text(text: str, model: str | None = None) -> list[float]:
    """Embed one text with the process's default batcher."""
    checked = validate_text(text, max_chars=_default().config.max_text_chars)
    return _default().embed_batch([checked], model).embeddings[0]
