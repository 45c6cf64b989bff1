"""The embedding worker: ``celery -A worker worker`` finds the Celery app as ``worker.app``.

The app is built on first access, so importing the in-process client (``worker.embeddings``)
or the settings never imports Celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
