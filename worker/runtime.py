"""Per-process state of a worker: settings and the micro-batcher, built lazily after fork.

Celery signals close them on shutdown, so a warm shutdown finishes calls in flight.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from celery.signals import worker_process_shutdown, worker_shutdown

from worker.breaker import EmbeddingBreaker
from worker.budget import BudgetGate, SharedBudget
from worker.celery_app import app
from worker.embeddings.batcher import EmbeddingBatcher
from worker.embeddings.config import EmbeddingConfig
from worker.errors import EmbeddingConfigError
from worker.flush_policy import FlushPolicy
from worker.microbatcher import MicroBatcher
from worker.redis_client import REDIS_SCHEMES, without_backend_class
from worker.revocation import RevokeList
from worker.settings import Settings
from worker.vector_cache import VectorCache

__all__ = ["VectorStore", "get_microbatcher", "get_settings", "limiter_url", "shutdown"]


@runtime_checkable
class VectorStore(Protocol):
    """A result backend that stores one call's ``(task id, vector)`` pairs in one step.

    Returns False when it stored nothing (each task then stores its own result).
    """

    def store_vectors(self, results: Sequence[tuple[str, list[float]]]) -> bool: ...


log = logging.getLogger(__name__)

_lock = threading.Lock()
_settings: Settings | None = None
_microbatcher: MicroBatcher | None = None
_owner_pid = 0


def get_settings() -> Settings:
    """This process's settings, read from the environment once."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def get_microbatcher() -> MicroBatcher:
    """This process's micro-batcher, created on first use (so after any fork)."""
    global _microbatcher, _owner_pid
    with _lock:
        if _microbatcher is None or _owner_pid != os.getpid():
            settings = get_settings()
            gate = _budget_gate(settings)
            shared = gate is not None
            batcher = EmbeddingBatcher(
                EmbeddingConfig.from_settings(settings),
                breaker=EmbeddingBreaker.from_settings(settings, count_rate_limits=not shared),
                # Under the shared budget a 429 pauses the cluster instead of being retried here.
                retry_rate_limits=not shared,
            )
            _microbatcher = MicroBatcher(
                batcher,
                flush_interval_s=settings.flush_interval_s,
                store_vectors=_store_vectors,
                gate=gate,
                cache=_vector_cache(settings),
                flush_policy=FlushPolicy(settings.flush_policy),
                revoked=_revoked_among,
                stored=_stored_among,
                bulk_floor_share=settings.bulk_floor_share,
            )
            _owner_pid = os.getpid()
            rpm, tpm = settings.limits_for(settings.model)
            log.info(
                "embeddings micro-batcher ready: base_url=%s model=%s batch_size=%d pool_size=%d "
                "shared budget=%s rpm=%s tpm=%s",
                settings.base_url,
                settings.model,
                settings.batch_size,
                settings.pool_size,
                "on" if shared else "off",
                rpm or "learned",
                tpm or "learned",
            )
        return _microbatcher


def limiter_url(settings: Settings, broker_url: str, result_backend: str) -> str | None:
    """The Redis of the shared budget: ``EMBEDDINGS_LIMITER_URL``, else the broker's or the
    result backend's, whichever is Redis; None when none is."""
    candidates = [settings.limiter_url, broker_url, without_backend_class(result_backend)]
    for url in candidates:
        if url and urlsplit(url).scheme in REDIS_SCHEMES:
            return url
    if settings.limiter_url:
        raise EmbeddingConfigError(
            f"EMBEDDINGS_LIMITER_URL must be a redis://, rediss://, unix:// or sentinel:// URL, "
            f"got scheme {urlsplit(settings.limiter_url).scheme!r}"
        )
    return None


def _budget_gate(settings: Settings) -> BudgetGate | None:
    if not settings.shared_budget:
        return None
    url = limiter_url(settings, str(app.conf.broker_url or ""), str(app.conf.result_backend or ""))
    if url is None:
        log.warning(
            "no Redis for the shared rate-limit budget (the broker is not Redis); set "
            "EMBEDDINGS_LIMITER_URL. Each process now backs off on its own."
        )
        return None
    return BudgetGate.from_settings(SharedBudget.from_url(url, settings), settings)


def _vector_cache(settings: Settings) -> VectorCache | None:
    if not settings.cache_url:
        return None
    return VectorCache.from_url(settings.cache_url, settings)


def _store_vectors(vectors: list[tuple[str, list[float]]]) -> bool:
    # Celery gives each thread its own backend; this is the calling (micro-batcher) thread's.
    backend = app.backend
    return isinstance(backend, VectorStore) and backend.store_vectors(vectors)


def _revoked_among(task_ids: list[str]) -> set[str]:
    # A result backend other than Redis keeps no revoke list: Celery's broadcast alone.
    backend = app.backend
    return backend.revoked_among(task_ids) if isinstance(backend, RevokeList) else set()


def _stored_among(task_ids: list[str]) -> dict[str, list[float]]:
    # One MGET of the call's result keys; a backend that is not Redis's: none known.
    backend = app.backend
    if not hasattr(backend, "get_key_for_task") or not hasattr(backend, "client"):
        return {}
    payloads = backend.client.mget([backend.get_key_for_task(t) for t in task_ids])
    stored: dict[str, list[float]] = {}
    for task_id, payload in zip(task_ids, payloads, strict=True):
        if payload is not None:
            meta = backend.decode_result(payload)
            if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), list):
                stored[task_id] = meta["result"]
    return stored


def shutdown(**_: Any) -> None:
    """Flush waiting texts, finish calls in flight, close the HTTP pool."""
    global _microbatcher
    with _lock:
        microbatcher, _microbatcher = _microbatcher, None
    if microbatcher is not None and _owner_pid == os.getpid():
        log.info("closing embeddings micro-batcher (%d texts waiting)", microbatcher.pending)
        microbatcher.close()


def _forget_in_child() -> None:
    global _microbatcher, _lock
    _lock = threading.Lock()
    _microbatcher = None


os.register_at_fork(after_in_child=_forget_in_child)
worker_shutdown.connect(shutdown, weak=False)
worker_process_shutdown.connect(shutdown, weak=False)
