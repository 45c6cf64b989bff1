"""Checks a worker makes before it takes its first text, with a one-line error when one fails.

``connect_signals()`` (called by ``worker.tasks``, the module only workers load) hooks
Celery's ``celeryd_init``, sent before the worker connects to the broker. Producers, the
gateway and Flower never hold the API key, so only the worker checks it.
"""

from __future__ import annotations

from typing import Any

from celery.signals import celeryd_init

from worker.errors import EmbeddingConfigError
from worker.settings import Settings, require_api_key

__all__ = ["check_worker_settings", "connect_signals"]


def check_worker_settings(**_: Any) -> None:
    """Exit with one line (no traceback) naming the variable when the worker cannot run.

    ``SystemExit``, not an exception: Celery's signal dispatch logs and swallows exceptions.
    """
    try:
        require_api_key(Settings.from_env())
    except EmbeddingConfigError as exc:
        raise SystemExit(f"worker not started: {exc}") from None


def connect_signals() -> None:
    """Run ``check_worker_settings`` when a worker starts (idempotent)."""
    celeryd_init.connect(check_worker_settings, weak=False, dispatch_uid=__name__)
