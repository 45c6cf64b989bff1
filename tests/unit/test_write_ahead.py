"""The write-ahead: a call's results stored in one step, and Celery's own write then skipped.

The micro-batcher marks each text's future ``stored_ahead`` when ``store_vectors`` stored
its result; the task reads the flag and sets ``request.ignore_result``, which Celery's
``mark_as_done`` honours. Nothing is kept per process (it was a global set of task ids,
bounded because a task that timed out never took its id back).
"""

from __future__ import annotations

from typing import Any

import pytest
from celery.app.trace import build_tracer
from celery.backends.base import Backend

import worker.tasks as tasks
from worker.microbatcher import TextFuture
from worker.names import BULK_QUEUE

VECTOR = [0.5] * 8


class RecordingBackend(Backend):  # type: ignore[misc]
    """Celery's base backend (its ``mark_as_done``), recording the writes it is asked for."""

    def __init__(self, app: Any) -> None:
        super().__init__(app=app)
        self.stored: list[tuple[str, str]] = []

    def store_result(self, task_id: str, result: Any, state: str, *args: Any, **kwargs: Any) -> Any:
        self.stored.append((task_id, state))
        return result


class FakeMicroBatcher:
    def __init__(self, *, stored_ahead: bool) -> None:
        self.stored_ahead = stored_ahead

    def submit(self, text: str, model: str | None = None, **options: Any) -> TextFuture:
        future = TextFuture()
        future.stored_ahead = self.stored_ahead and options.get("task_id") is not None
        future.set_result(VECTOR)
        return future


@pytest.mark.parametrize(("stored_ahead", "writes"), [(True, []), (False, [("t-1", "SUCCESS")])])
def test_the_task_stores_its_result_unless_its_call_stored_it_ahead(
    monkeypatch: pytest.MonkeyPatch, stored_ahead: bool, writes: list[tuple[str, str]]
) -> None:
    task = tasks.embed_text_task
    backend = RecordingBackend(task.app)
    monkeypatch.setattr(task, "_backend", backend, raising=False)
    monkeypatch.setattr(
        tasks, "get_microbatcher", lambda: FakeMicroBatcher(stored_ahead=stored_ahead)
    )
    trace = build_tracer(task.name, task, app=task.app, eager=False)
    request = {"id": "t-1", "delivery_info": {"routing_key": BULK_QUEUE}, "is_eager": False}
    info = trace("t-1", ["a text"], {}, request)
    assert info.retval == VECTOR and info.info is None  # no exception info: it succeeded
    assert backend.stored == writes
