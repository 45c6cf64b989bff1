"""Broker URLs as the banner and Flower show them: a mask only where a password exists."""

from __future__ import annotations

import pytest
from celery import Celery

from worker.celery_ext import display


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:secret@127.0.0.1:6379/0", "redis://:**@127.0.0.1:6379/0"),
        ("redis://bob@127.0.0.1:6379/0", "redis://bob@127.0.0.1:6379/0"),
        ("rediss://bob:pw@cache.internal:6380/1", "rediss://bob:**@cache.internal:6380/1"),
    ],
)
def test_only_a_password_that_exists_is_masked(url: str, shown: str) -> None:
    app = Celery("display-test", broker=url, set_as_current=False)
    display.install(app)
    with app.connection() as connection:
        assert connection.as_uri() == shown
        # What Flower connects with stays kombu's own, password and all.
        assert connection.as_uri(include_password=True) == url


def test_the_projects_app_uses_the_display_connection() -> None:
    from worker import app

    with app.connection() as connection:
        assert type(connection) is display.DisplayConnection
