"""Per-task INFO lines stay out of worker logs unless the worker logs at DEBUG."""

from __future__ import annotations

import logging

import pytest

from worker.celery_ext.tasklog import PER_TASK_LOGGERS, quiet_per_task_info


@pytest.fixture
def restore_levels():
    saved = {name: logging.getLogger(name).level for name in PER_TASK_LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("loglevel", [logging.INFO, "INFO", logging.WARNING])
def test_a_worker_at_info_or_above_writes_no_per_task_info_lines(restore_levels, loglevel):
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    quiet_per_task_info(loglevel=loglevel, logger=logging.getLogger())
    for name in PER_TASK_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING


def test_a_worker_at_debug_keeps_every_per_task_line(restore_levels):
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    quiet_per_task_info(loglevel=logging.DEBUG)
    for name in PER_TASK_LOGGERS:
        assert logging.getLogger(name).level == logging.NOTSET
