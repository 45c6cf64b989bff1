"""Bad input at the producer: each kind refused with a message saying what is wrong, none sent."""

from __future__ import annotations

from typing import Any

import pytest

import producers
from worker import app as celery_app
from worker.celery_ext import bulk_publish
from worker.errors import EmbeddingInputError, EmbeddingInputTypeError
from worker.settings import DEFAULT_MAX_TEXT_CHARS


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every task the producers tried to send; nothing reaches a broker."""
    calls: list[tuple[Any, ...]] = []

    def record(name: str, *args: Any, **kwargs: Any) -> None:
        calls.append((name, args, kwargs))

    def record_bulk(app: Any, name: str, chunk: Any, **_options: Any) -> Any:
        for args, kwargs in chunk:
            record(name, args=args, kwargs=kwargs)
        yield []

    monkeypatch.setattr(celery_app, "send_task", record)
    monkeypatch.setattr(bulk_publish, "publish_chunks", record_bulk)
    monkeypatch.setattr(bulk_publish, "publish_chunk_ids", record_bulk)
    return calls


TOO_LONG = "x" * (DEFAULT_MAX_TEXT_CHARS + 1)

# (id, bad text, error type, what the message must say)
BAD_TEXTS = [
    ("an int", 123, EmbeddingInputTypeError, r"must be str, got int"),
    ("None", None, EmbeddingInputTypeError, r"must be str, got NoneType"),
    ("bytes", b"raw bytes", EmbeddingInputTypeError, r"must be str, got bytes"),
    ("a float", 1.5, EmbeddingInputTypeError, r"must be str, got float"),
    ("a list", ["nested"], EmbeddingInputTypeError, r"must be str, got list"),
    ("a dict", {"text": "hi"}, EmbeddingInputTypeError, r"must be str, got dict"),
    ("an empty string", "", EmbeddingInputError, r"is empty"),
    ("ASCII whitespace", " \t\n ", EmbeddingInputError, r"is whitespace-only"),
    ("Unicode whitespace", "\u3000\u00a0\u2003", EmbeddingInputError, r"is whitespace-only"),
    ("a lone surrogate", "ok \ud800 no", EmbeddingInputError, r"lone surrogate at offset 3"),
    ("a NUL byte", "before\x00after", EmbeddingInputError, r"NUL character at offset 6"),
    (
        "a huge text",
        TOO_LONG,
        EmbeddingInputError,
        rf"has {DEFAULT_MAX_TEXT_CHARS + 1} characters; the limit is {DEFAULT_MAX_TEXT_CHARS}",
    ),
]


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [case[1:] for case in BAD_TEXTS],
    ids=[case[0] for case in BAD_TEXTS],
)
def test_enqueue_text_refuses_each_kind_of_bad_text_saying_why_and_sends_nothing(
    sent, bad, error, message
):
    with pytest.raises(error, match=message):
        producers.enqueue_text(bad)
    assert sent == []


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [case[1:] for case in BAD_TEXTS],
    ids=[case[0] for case in BAD_TEXTS],
)
def test_one_bad_text_in_a_list_refuses_the_whole_list_naming_its_index(sent, bad, error, message):
    with pytest.raises(error, match=r"text at index 2 .*" + message):
        producers.enqueue_texts(["first", "second", bad, "fourth"])
    assert sent == []


def test_bad_input_errors_are_plain_value_and_type_errors_for_callers():
    with pytest.raises(TypeError):
        producers.enqueue_text(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        producers.enqueue_text("")


def test_a_bare_string_given_as_a_list_of_texts_is_refused(sent):
    with pytest.raises(EmbeddingInputTypeError, match="not a single str"):
        producers.enqueue_texts("one text, not a list")
    assert sent == []


def test_bytes_given_as_a_list_of_texts_are_refused(sent):
    with pytest.raises(EmbeddingInputTypeError, match="not a single str"):
        producers.enqueue_texts(b"bytes, not a list")  # type: ignore[arg-type]
    assert sent == []


def test_a_bad_text_at_the_end_of_a_generator_stops_every_earlier_text_too(sent):
    def texts() -> Any:
        yield from (f"fine {i}" for i in range(50))
        yield ""

    with pytest.raises(EmbeddingInputError, match="text at index 50 is empty"):
        producers.enqueue_texts(texts())
    assert sent == []


def test_embed_text_refuses_before_enqueueing_and_does_not_wait(sent):
    with pytest.raises(EmbeddingInputError, match="is empty"):
        producers.embed_text("", timeout=0.01)
    assert sent == []


def test_good_texts_are_sent_one_task_each(sent):
    producers.enqueue_texts(["alpha", "beta"], model="m")
    assert [(name, args, kwargs["kwargs"]) for name, args, kwargs in sent] == [
        ("embeddings.embed_text", (), {"model": "m"}),
        ("embeddings.embed_text", (), {"model": "m"}),
    ]
    assert [kwargs["args"] for _, _, kwargs in sent] == [("alpha",), ("beta",)]
