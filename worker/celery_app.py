"""The Celery app, configured from ``celeryconfig``; tasks live in ``worker.tasks``."""

from __future__ import annotations

from celery import Celery

__all__ = ["app"]

app = Celery("worker", include=["worker.tasks"])
app.config_from_object("celeryconfig")
