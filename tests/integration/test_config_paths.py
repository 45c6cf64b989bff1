"""A real worker configured through the Celery variables runs the project's classes."""

from __future__ import annotations

import pytest

import producers
from tests.integration.faultkit import expected
from tests.integration.harness import TEST_REDIS_URL

pytestmark = pytest.mark.integration


def test_a_worker_configured_by_the_celery_variables_reports_the_projects_classes(
    app, start_worker, stub
):
    # REDIS_URL points nowhere: the worker must take both sides from the Celery variables,
    # and Celery's own reading of them must not swap the project's classes for stock ones.
    worker = start_worker(
        stub.base_url,
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "EMBEDDINGS_BROKER_URL": TEST_REDIS_URL,
            "EMBEDDINGS_RESULT_BACKEND_URL": TEST_REDIS_URL,
        },
    )
    replies = app.control.inspect(destination=[worker.hostname], timeout=5).report()
    report = replies[worker.hostname]["ok"]
    settings_line = next(line for line in report.splitlines() if line.startswith("settings ->"))
    # install() makes kombu's redis transport the atomic fetch (tests/unit: the class behind
    # the alias), so the URL keeps its scheme for Flower and the report.
    assert "transport:redis " in settings_line
    assert "results:worker.celery_ext.result_backend:ResultBackend+redis://" in settings_line
    assert producers.enqueue_text("configured by CELERY_*", app=app).get(timeout=30) == expected(
        "configured by CELERY_*"
    )
