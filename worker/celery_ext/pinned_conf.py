"""Celery's configuration object, minus its own reading of four environment variables.

Celery's ``Settings`` answers ``broker_url``, ``broker_read_url``, ``broker_write_url`` and
``result_backend`` from ``CELERY_BROKER_URL``, ``CELERY_BROKER_READ_URL``,
``CELERY_BROKER_WRITE_URL`` and ``CELERY_RESULT_BACKEND`` whenever those are set, ahead of
the configuration. ``worker.settings.Settings`` already reads ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` and ``worker.celery_ext.config`` turns them into the project's
classes (``ResultBackend+redis://…``); Celery's second reading returned the bare URL, so a
worker configured through ``CELERY_RESULT_BACKEND`` (or ``celery --result-backend``, which
sets it) ran Celery's stock Redis backend, and ``embed-file --redis-url`` sent to the
broker of ``CELERY_BROKER_URL`` instead of the URL it was given.

``pin(app)`` makes ``app.conf`` answer those four from the configuration alone. Called by
``worker.celery_ext.install`` and ``worker.celery_ext.config.apply_config``. Written against
celery 5.7.0; ``worker.celery_ext.compat`` checks the names used here.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app import utils as celery_app_utils

__all__ = ["PinnedSettings", "pin"]

_CelerySettings: Any = celery_app_utils.Settings


class PinnedSettings(_CelerySettings):  # type: ignore[misc]
    """Celery's ``Settings`` whose broker and result URLs come from the configuration only."""

    @property
    def broker_url(self) -> Any:
        """Adapted from celery 5.7.0 celery/app/utils.py Settings.broker_url."""
        return self.first("broker_url", "broker_host")

    @property
    def broker_read_url(self) -> Any:
        """Adapted from celery 5.7.0 celery/app/utils.py Settings.broker_read_url."""
        return self.get("broker_read_url") or self.broker_url

    @property
    def broker_write_url(self) -> Any:
        """Adapted from celery 5.7.0 celery/app/utils.py Settings.broker_write_url."""
        return self.get("broker_write_url") or self.broker_url

    @property
    def result_backend(self) -> Any:
        """Adapted from celery 5.7.0 celery/app/utils.py Settings.result_backend."""
        return self.first("result_backend", "CELERY_RESULT_BACKEND")


def pin(app: Celery) -> None:
    """Make ``app.conf`` read its broker and result URLs from the configuration (idempotent).

    Celery keeps one configuration object per app for its whole life, swapping its contents
    in place when the configuration loads, so changing its class once is enough.
    """
    conf = app.conf
    if not isinstance(conf, PinnedSettings):
        # Celery's Settings stores plain attribute assignments as configuration keys.
        object.__setattr__(conf, "__class__", PinnedSettings)
