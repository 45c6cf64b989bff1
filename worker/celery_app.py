"""The Celery app: configured from ``celeryconfig``, with the Celery adaptations installed.

This module and ``celeryconfig`` are where the product (``worker``) and the Celery
adaptations (``worker.celery_ext``) meet; tasks live in ``worker.tasks``.
"""

from __future__ import annotations

from celery import Celery

from embeddings_flower.guard import guard_celery_flower
from worker.celery_ext import install

__all__ = ["app"]

app = Celery("worker", include=["worker.tasks"])
# worker.celery_ext.config.celery_config(Settings.from_env()), read when first needed.
app.config_from_object("celeryconfig")
install(app)
# `celery -A worker flower` from any directory: Flower demands a login and binds loopback
# (embeddings_flower.guard), not only when started beside the repo's flowerconfig.py.
guard_celery_flower()
