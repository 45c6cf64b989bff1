"""Per-task and per-call INFO lines only at ``--loglevel=DEBUG``.

At INFO Celery writes two lines per text: "Task … received" and "Task … succeeded", on a
service whose tasks are single texts; httpx adds one per API call ("HTTP Request: POST …
200 OK"). Their cost under load is in docs/benchmark.md. Flower (task events) and the
metrics already show every task and call; failures and rejections keep Celery's WARNING and
ERROR lines, a retry the task's own WARNING, and a retried call the client's own line.
``connect()`` (called by ``worker.celery_ext.install``) hooks Celery's ``after_setup_logger``
signal, so it only acts where Celery sets up a worker's logging.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger

__all__ = ["PER_TASK_LOGGERS", "connect", "quiet_per_task_info"]

# Celery's loggers of the two per-task INFO lines (strategy: received; trace: succeeded),
# and httpx's of its per-request line.
PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace", "httpx")


def quiet_per_task_info(loglevel: int | str | None = None, **_: Any) -> None:
    """Raise the per-task loggers to WARNING unless the worker logs at DEBUG."""
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    if isinstance(level, int) and level <= logging.DEBUG:
        return
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def connect() -> None:
    """Quiet the per-task loggers whenever Celery sets up a worker's logging (idempotent)."""
    after_setup_logger.connect(quiet_per_task_info, weak=False, dispatch_uid=__name__)
