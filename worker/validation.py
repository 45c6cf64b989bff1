"""Input checks shared by producers and workers, run before anything is enqueued or sent.

Kept free of HTTP and Celery imports so a web app can use it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable

from worker.errors import EmbeddingInputError, EmbeddingInputTypeError

__all__ = ["MAX_MODEL_CHARS", "validate_model", "validate_text", "validate_texts"]

# Model names are short ("text-embedding-3-small", "BAAI/bge-large-en-v1.5"); a long one is
# a mistake, and it travels in every task message.
MAX_MODEL_CHARS = 256


def validate_text(text: object, *, max_chars: int, position: int | None = None) -> str:
    """Return ``text`` if the API can embed it, else raise an ``EmbeddingInputError``.

    ``position`` names the text's index in a list, so the message says where it is.
    """
    where = "text" if position is None else f"text at index {position}"
    if not isinstance(text, str):
        raise EmbeddingInputTypeError(f"{where} must be str, got {type(text).__name__}")
    if not text.strip():
        # OpenAI answers 400 "'$.input' is invalid" for these; refuse them before enqueueing.
        kind = "empty" if text == "" else "whitespace-only"
        raise EmbeddingInputError(f"{where} is {kind}")
    if len(text) > max_chars:
        raise EmbeddingInputError(f"{where} has {len(text)} characters; the limit is {max_chars}")
    if "\x00" in text:
        # JSON carries NUL as \u0000, but tokenizers and several servers reject it.
        offset = text.index("\x00")
        raise EmbeddingInputError(f"{where} contains a NUL character at offset {offset}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EmbeddingInputError(
            f"{where} cannot be encoded as UTF-8 (lone surrogate at offset {exc.start})"
        ) from exc
    return text


def validate_texts(texts: Iterable[object], *, max_chars: int) -> list[str]:
    """Validate every text of ``texts``; a bare ``str`` is refused as a likely mistake."""
    if isinstance(texts, (str, bytes)):
        raise EmbeddingInputTypeError(
            "texts must be a list of str, not a single str; use the single-text function"
        )
    return [validate_text(text, max_chars=max_chars, position=i) for i, text in enumerate(texts)]


def validate_model(model: object) -> str | None:
    """Return ``model`` if it can name a model (None: the configured one), else raise.

    It must be None or a non-empty ``str`` of at most ``MAX_MODEL_CHARS`` printable
    characters; anything else would cost an API call and then fail, or fail obscurely.
    """
    if model is None:
        return None
    if not isinstance(model, str):
        raise EmbeddingInputTypeError(f"model must be str or None, got {type(model).__name__}")
    if not model.strip():
        raise EmbeddingInputError("model is empty; pass None for the configured model")
    if len(model) > MAX_MODEL_CHARS:
        raise EmbeddingInputError(
            f"model has {len(model)} characters; the limit is {MAX_MODEL_CHARS}"
        )
    if not model.isprintable():
        raise EmbeddingInputError("model contains a control character")
    return model
