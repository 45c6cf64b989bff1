"""Input checks shared by producers and workers, run before anything is enqueued or sent.

Kept free of HTTP and Celery imports so a web app can use it cheaply.

Token limits (``TokenLimit``, from ``token_limit(settings, model)``): OpenAI refuses an input
of more than 8,192 tokens, and a request of more than 300,000, with a 400 that names neither
the input nor its count, after the call is paid for. Checked here, a text over the limit is
refused before it is enqueued, naming its index, its count and the limit. Counting stays
cheap: cl100k_base is byte-level BPE, every token at least one UTF-8 byte, so a text of at
most ``limit`` bytes (or ``limit // 4`` characters, four bytes being the most a character
takes) is within it uncounted; only longer texts are tokenized. Measured in
docs/design.md, "Token limits before enqueue".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from worker.errors import EmbeddingInputError, EmbeddingInputTypeError
from worker.settings import Settings
from worker.tokens import ESTIMATE, estimate_tokens, token_counter

__all__ = [
    "MAX_MODEL_CHARS",
    "TokenLimit",
    "check_input_tokens",
    "check_request_tokens",
    "token_limit",
    "validate_model",
    "validate_text",
    "validate_texts",
]

# Model names are short ("text-embedding-3-small", "BAAI/bge-large-en-v1.5"); a long one is
# a mistake, and it travels in every task message.
MAX_MODEL_CHARS = 256


@dataclass(frozen=True)
class TokenLimit:
    """The most tokens one input to ``model`` may hold, and how they are counted.

    ``max_tokens`` is the per-input limit (``EMBEDDINGS_MAX_INPUT_TOKENS``), lowered to
    ``max_request_tokens // batch_size`` when a full call of ``batch_size`` texts at the
    per-input limit would exceed the per-request one. ``encoding`` is the model's
    (``Settings.encoding_for``); for ``estimate`` the counts are estimates and say so.
    """

    model: str
    encoding: str
    max_tokens: int
    max_request_tokens: int = 0  # 0: no per-request check
    why: str = "per input"

    def describe(self) -> str:
        """How the counts were made, for an error message."""
        if self.encoding == ESTIMATE:
            return (
                f"estimated at one per two UTF-8 bytes: the tokenizer of {self.model!r} is "
                "unknown (EMBEDDINGS_TOKENIZER names it)"
            )
        return f"{self.encoding}, {self.model}"


def token_limit(settings: Settings, model: str | None) -> TokenLimit | None:
    """``model``'s ``TokenLimit`` under ``settings`` (None: the configured model); None when
    ``EMBEDDINGS_MAX_INPUT_TOKENS`` is 0 (no token check)."""
    name = model or settings.model
    per_input = settings.max_input_tokens
    if not per_input:
        return None
    per_request = settings.max_request_tokens
    why = "per input"
    if per_request and settings.batch_size * per_input > per_request:
        # A call of batch_size texts, each at the per-input limit, must still fit a request.
        per_input = max(1, per_request // settings.batch_size)
        why = (
            f"per input: EMBEDDINGS_MAX_REQUEST_TOKENS={per_request} shared by "
            f"EMBEDDINGS_BATCH_SIZE={settings.batch_size} texts a call"
        )
    return TokenLimit(name, settings.encoding_for(name), per_input, per_request, why)


def check_input_tokens(tokens: int, limit: TokenLimit, where: str) -> None:
    """Raise ``EmbeddingInputError`` if ``where`` (e.g. "text at index 3"), of ``tokens``
    tokens, is over ``limit``."""
    if tokens > limit.max_tokens:
        raise EmbeddingInputError(
            f"{where} has {tokens} tokens ({limit.describe()}); the limit is "
            f"{limit.max_tokens} tokens {limit.why}"
        )


def check_request_tokens(tokens: int, limit: TokenLimit) -> None:
    """Raise ``EmbeddingInputError`` if one request's ``tokens`` are over its limit."""
    if limit.max_request_tokens and tokens > limit.max_request_tokens:
        raise EmbeddingInputError(
            f"the inputs have {tokens} tokens in all ({limit.describe()}); the limit is "
            f"{limit.max_request_tokens} tokens per request"
        )


def _over_limit(text: str, limit: TokenLimit) -> int | None:
    """``text``'s tokens if they may be over ``limit``, else None; counts only when needed."""
    if len(text) <= limit.max_tokens // 4:  # at most 4 UTF-8 bytes per character
        return None
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if limit.encoding == ESTIMATE:
        return estimate_tokens(text)
    if size <= limit.max_tokens:  # byte-level BPE: at least one byte per token
        return None
    return token_counter(limit.encoding)(text)


def validate_text(
    text: object,
    *,
    max_chars: int,
    position: int | None = None,
    tokens: TokenLimit | None = None,
) -> str:
    """Return ``text`` if the API can embed it, else raise an ``EmbeddingInputError``.

    ``position`` names the text's index in a list, so the message says where it is. With
    ``tokens``, a text over that limit is refused too, naming its count and the limit.
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
    if tokens is not None:
        counted = _over_limit(text, tokens)
        if counted is not None:
            check_input_tokens(counted, tokens, where)
    return text


def validate_texts(
    texts: Iterable[object], *, max_chars: int, tokens: TokenLimit | None = None
) -> list[str]:
    """Validate every text of ``texts``; a bare ``str`` is refused as a likely mistake."""
    if isinstance(texts, (str, bytes)):
        raise EmbeddingInputTypeError(
            "texts must be a list of str, not a single str; use the single-text function"
        )
    return [
        validate_text(text, max_chars=max_chars, position=i, tokens=tokens)
        for i, text in enumerate(texts)
    ]


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
