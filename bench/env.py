"""The environment of a benchmark's worker (or gateway) process."""

from __future__ import annotations

import os

from devstack import REPO_ROOT

__all__ = ["BENCH_API_KEY", "bench_env"]

BENCH_API_KEY = "sk-bench-not-a-secret"


def bench_env(redis_url: str, base_url: str, dimensions: int, **extra: str) -> dict[str, str]:
    """This process's environment without its ``EMBEDDINGS_*``/``CELERY_*`` settings, then the
    bench's own: the Redis, the stub API and its dimensions, and ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env.update(
        REDIS_URL=redis_url,
        EMBEDDINGS_BASE_URL=base_url,
        EMBEDDINGS_API_KEY=BENCH_API_KEY,
        EMBEDDINGS_DIMENSIONS=str(dimensions),
        PYTHONPATH=str(REPO_ROOT),
    )
    env.update(extra)
    return env
