"""``worker.validation``: texts are refused before anything is enqueued or sent."""

from __future__ import annotations

import pytest

from worker.errors import EmbeddingError, EmbeddingInputError, EmbeddingInputTypeError
from worker.validation import validate_model, validate_text, validate_texts

LIMIT = 50


def test_a_good_text_is_returned_unchanged() -> None:
    text = "  café ☕ naïve 日本語 🙂 "
    assert validate_text(text, max_chars=LIMIT) is text


def test_a_text_of_exactly_the_limit_is_accepted() -> None:
    assert validate_text("x" * LIMIT, max_chars=LIMIT) == "x" * LIMIT


@pytest.mark.parametrize(("value", "type_name"), [(3, "int"), (None, "NoneType"), (b"hi", "bytes")])
def test_a_non_str_text_is_a_type_error_naming_its_type(value: object, type_name: str) -> None:
    with pytest.raises(EmbeddingInputTypeError, match=f"must be str, got {type_name}") as info:
        validate_text(value, max_chars=LIMIT)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, EmbeddingError)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "is empty"),
        ("   \n", "is whitespace-only"),
        ("\t\r\n ", "is whitespace-only"),
        ("x" * (LIMIT + 1), f"has {LIMIT + 1} characters; the limit is {LIMIT}"),
        ("ab\x00c", "contains a NUL character at offset 2"),
        ("ok\ud800", "lone surrogate at offset 2"),
    ],
)
def test_an_unusable_text_is_a_value_error_saying_why(text: str, reason: str) -> None:
    with pytest.raises(EmbeddingInputError) as info:
        validate_text(text, max_chars=LIMIT)
    assert reason in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, TypeError)


def test_the_error_names_the_position_in_a_list() -> None:
    with pytest.raises(EmbeddingInputError, match="text at index 3 is empty"):
        validate_texts(["a", "b", "c", "", "e"], max_chars=LIMIT)


def test_a_non_str_in_a_list_names_its_index() -> None:
    with pytest.raises(EmbeddingInputTypeError, match="text at index 1 must be str, got int"):
        validate_texts(["a", 7], max_chars=LIMIT)


def test_a_single_text_error_says_text_without_an_index() -> None:
    with pytest.raises(EmbeddingInputError) as info:
        validate_text("", max_chars=LIMIT)
    assert str(info.value) == "text is empty"


@pytest.mark.parametrize("texts", ["hello", b"hello"])
def test_a_bare_str_or_bytes_is_refused_as_a_list(texts: object) -> None:
    with pytest.raises(EmbeddingInputTypeError, match="not a single str"):
        validate_texts(texts, max_chars=LIMIT)  # type: ignore[arg-type]


def test_validate_texts_returns_a_list_from_any_iterable() -> None:
    assert validate_texts((t for t in ["a", "b"]), max_chars=LIMIT) == ["a", "b"]


def test_an_empty_list_is_valid() -> None:
    assert validate_texts([], max_chars=LIMIT) == []


def test_a_text_error_is_chained_from_the_encoding_error() -> None:
    with pytest.raises(EmbeddingInputError) as info:
        validate_text("\udfff", max_chars=LIMIT)
    assert isinstance(info.value.__cause__, UnicodeEncodeError)


@pytest.mark.parametrize("model", [None, "text-embedding-3-small", "BAAI/bge-large-en-v1.5"])
def test_a_model_name_or_none_is_accepted(model) -> None:
    assert validate_model(model) == model


@pytest.mark.parametrize(
    ("model", "error"),
    [
        (123, EmbeddingInputTypeError),
        (["m"], EmbeddingInputTypeError),
        ("", EmbeddingInputError),
        ("   ", EmbeddingInputError),
        ("m" * 257, EmbeddingInputError),
        ("model\n", EmbeddingInputError),
    ],
)
def test_a_bad_model_is_refused_with_a_typed_error(model, error) -> None:
    with pytest.raises(error, match="model"):
        validate_model(model)


@pytest.mark.parametrize("model", ["", 123, ["m"]])
def test_the_producer_refuses_a_bad_model_before_enqueueing(model, monkeypatch) -> None:
    import producers.client

    sent: list[object] = []
    monkeypatch.setattr(producers.client, "_send", lambda *args: sent.append(args))
    with pytest.raises(EmbeddingInputError):
        producers.client.enqueue_text("fine text", model=model)
    with pytest.raises(EmbeddingInputError):
        producers.client.enqueue_texts(["fine", "texts"], model=model)
    assert sent == []
