"""Texts stay out of task metadata: producers publish a length and a hash as the arguments' repr."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish

import producers
import producers.aio as aio
import producers.client as client
from worker import app as celery_app
from worker.errors import EmbeddingConfigError
from worker.redaction import HASH_HEX_CHARS, task_reprs, text_summary
from worker.settings import Settings

CANARY = "my SSN is 123-45-6789 canary"


def test_a_text_summary_is_its_length_and_a_sha256_prefix() -> None:
    digest = hashlib.sha256(CANARY.encode()).hexdigest()[:HASH_HEX_CHARS]
    assert text_summary(CANARY) == f"<text: {len(CANARY)} chars, sha256 {digest}…>"
    assert text_summary("é" * 3).startswith("<text: 3 chars, ")  # characters, not bytes


def test_the_task_reprs_hold_the_model_but_never_the_text() -> None:
    argsrepr, kwargsrepr = task_reprs(CANARY, "text-embedding-3-large")
    assert argsrepr == f"({text_summary(CANARY)},)"
    assert kwargsrepr == "{'model': 'text-embedding-3-large'}"
    assert task_reprs(CANARY, None)[1] == "{}"
    assert "123-45" not in f"{argsrepr}{kwargsrepr}"


def test_show_texts_leaves_celerys_own_rendering() -> None:
    assert task_reprs(CANARY, "m", show_texts=True) == (None, None)


def test_the_lane_is_shown_among_the_keyword_arguments_and_the_text_still_is_not() -> None:
    argsrepr, kwargsrepr = task_reprs(CANARY, "m", lane="bulk")
    assert argsrepr == f"({text_summary(CANARY)},)"
    assert kwargsrepr == "{'model': 'm', 'lane': 'bulk'}"
    assert task_reprs(CANARY, None, lane="interactive")[1] == "{'lane': 'interactive'}"
    assert "123-45" not in f"{argsrepr}{kwargsrepr}"


def test_show_texts_still_shows_the_lane_while_celery_renders_the_text() -> None:
    assert task_reprs(CANARY, "m", show_texts=True, lane="bulk") == (
        None,
        "{'model': 'm', 'lane': 'bulk'}",
    )


def test_a_caller_that_names_no_lane_gets_the_rendering_it_had_before_lanes() -> None:
    # worker/tasks.py renders a Celery retry's message this way until it passes the lane.
    assert task_reprs(CANARY, "m") == (f"({text_summary(CANARY)},)", "{'model': 'm'}")
    assert task_reprs(CANARY, "m", show_texts=True) == (None, None)


def test_a_non_text_argument_is_shown_by_its_type_only() -> None:
    assert task_reprs(b"raw secret", None)[0] == "(<bytes>,)"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(celery_app, "send_task", lambda name, **options: calls.append(options))
    return calls


def test_the_sync_producer_publishes_the_redacted_reprs(
    sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_settings", Settings())
    producers.enqueue_text(CANARY, model="m")
    (options,) = sent
    assert options["args"] == (CANARY,)  # the worker still gets the text itself
    assert (options["argsrepr"], options["kwargsrepr"]) == task_reprs(
        CANARY, "m", lane="interactive"
    )
    assert options["kwargsrepr"] == "{'model': 'm', 'lane': 'interactive'}"


def test_embeddings_show_texts_makes_the_sync_producer_leave_the_text_in(
    sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_settings", Settings.from_env({"EMBEDDINGS_SHOW_TEXTS": "1"}))
    producers.enqueue_text(CANARY, lane="bulk")
    # Celery renders the arguments, text included; the lane is still shown beside them.
    assert sent[0]["argsrepr"] is None
    assert sent[0]["kwargsrepr"] == "{'lane': 'bulk'}"


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    app = Celery("redaction", broker="memory://", backend="cache+memory://")
    app.conf.update(task_default_queue="embeddings", task_send_sent_event=True)
    yield app
    app.close()


def test_the_async_producer_publishes_the_redacted_reprs(
    memory_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "_settings", Settings())
    seen: list[dict[str, Any]] = []

    def on_publish(headers: dict[str, Any], body: Any, **_: Any) -> None:
        seen.append({"headers": dict(headers), "body": body})

    before_task_publish.connect(on_publish, weak=False)
    try:
        aio._publish(memory_app, [("id-1", CANARY)], "m", "bulk")
    finally:
        before_task_publish.disconnect(on_publish)
    (message,) = seen
    assert list(message["body"][0]) == [CANARY]  # the worker still gets the text
    headers = message["headers"]
    assert (headers["argsrepr"], headers["kwargsrepr"]) == task_reprs(CANARY, "m", lane="bulk")
    assert headers["kwargsrepr"] == "{'model': 'm', 'lane': 'bulk'}"
    assert "123-45" not in repr(headers)


def test_a_bad_embeddings_show_texts_fails_naming_the_variable() -> None:
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_SHOW_TEXTS"):
        Settings.from_env({"EMBEDDINGS_SHOW_TEXTS": "2"})
