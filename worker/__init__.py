"""The embedding worker: ``celery -A worker worker`` finds the Celery app as ``worker.app``."""

from worker.celery_app import app

__all__ = ["app"]
