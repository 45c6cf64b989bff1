"""Read a ``POST /v1/embeddings`` body as OpenAI does, and write its answer.

Parsing is by hand rather than by a pydantic model, so each refusal names the parameter and
says what to do, in OpenAI's words where OpenAI has them, instead of a generic 422.

``input`` is a string, a list of strings, or token arrays as OpenAI takes them: one
``list[int]``, or a ``list[list[int]]``. Token arrays are decoded to text with the model's
encoding (``EMBEDDINGS_TOKENIZER``; cl100k_base for OpenAI's models), so everything after
this module (the task, the vector cache, the budget) sees the text whose tokens they are:
docs/gateway.md, "Token arrays". Every input is held to the producers' checks and token
limits (``worker.validation``), and ``usage`` is counted exactly in that encoding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import ApiError
from gateway.lanes import lane_of_service_tier
from gateway.settings import MAX_INPUTS
from producers.client import producer_settings
from worker.errors import EmbeddingInputError
from worker.settings import Settings
from worker.tokens import ESTIMATE, decode_tokens, token_counter
from worker.validation import (
    TokenLimit,
    check_input_tokens,
    check_request_tokens,
    token_limit,
    validate_text,
    validate_texts,
)
from worker.vector_codec import pack_vector

__all__ = ["EmbeddingRequest", "parse_request", "render_response"]

EncodingFormat = Literal["float", "base64"]

INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)


@dataclass(frozen=True)
class EmbeddingRequest:
    """A checked request: ``texts`` in input order; ``dimensions`` None when not asked for.

    ``prompt_tokens`` is what ``usage`` reports: each token array's length, and each text's
    count in the model's encoding (the estimate for a model whose encoding is unknown).
    ``service_tier_lane`` is the lane its ``service_tier`` asks for (``gateway.lanes``), None
    when it names none; the ``X-Embeddings-Lane`` header, read by the app, wins over it.
    """

    texts: list[str]
    model: str
    encoding_format: EncodingFormat
    dimensions: int | None
    service_tier_lane: str | None = None
    prompt_tokens: int = 0


def parse_request(
    body: bytes, *, max_text_chars: int, settings: Settings | None = None
) -> EmbeddingRequest:
    """Check ``body`` fully, or raise a 400 :class:`ApiError` naming the bad parameter.

    ``settings`` (default: the producers' own, ``producer_settings()``) give each model's
    token encoding and the token limits, as the workers have them.
    """
    try:
        request = json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(request, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = request.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "you must provide a model parameter", param="model")
    texts, tokens = _Inputs(settings or producer_settings(), model, max_text_chars).read(request)
    return EmbeddingRequest(
        texts=texts,
        model=model,
        encoding_format=_encoding_format(request.get("encoding_format")),
        dimensions=_dimensions(request.get("dimensions")),
        service_tier_lane=lane_of_service_tier(request.get("service_tier")),
        prompt_tokens=tokens,
    )


class _Inputs:
    """``input`` read for one model: its texts and their tokens, or a 400."""

    def __init__(self, settings: Settings, model: str, max_text_chars: int) -> None:
        self.model = model
        self.encoding = settings.encoding_for(model)
        self.limit: TokenLimit | None = token_limit(settings, model)
        self.max_text_chars = max_text_chars

    def read(self, request: dict[str, Any]) -> tuple[list[str], int]:
        if "input" not in request:
            raise ApiError(400, "'input' is a required property", param="input")
        raw = request["input"]
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items:
            raise ApiError(400, INVALID_INPUT, param="input")
        arrays = _token_arrays(items)
        count = len(arrays) if arrays is not None else len(items)
        if count > MAX_INPUTS:
            raise ApiError(
                400, f"Too many inputs. The max number of inputs is {MAX_INPUTS}.", param="input"
            )
        try:
            if arrays is not None:
                texts, tokens = self._decoded(arrays)
            else:
                # The producers' own checks: empty, whitespace-only, NUL, lone surrogate, too
                # long in characters or in tokens.
                texts = validate_texts(items, max_chars=self.max_text_chars, tokens=self.limit)
                tokens = sum(map(token_counter(self.encoding), texts))
            if self.limit is not None:
                check_request_tokens(tokens, self.limit)
        except EmbeddingInputError as exc:
            raise ApiError(400, f"'input' is invalid: {exc}", param="input") from None
        return texts, tokens

    def _decoded(self, arrays: list[list[int]]) -> tuple[list[str], int]:
        if self.encoding == ESTIMATE:
            raise ApiError(
                400,
                f"'input' holds token arrays, and the token encoding of model {self.model!r} "
                "is unknown to this gateway, so they cannot be read: send the text instead "
                "(or name its encoding in EMBEDDINGS_TOKENIZER, e.g. MODEL=cl100k_base)",
                param="input",
                code="token_arrays_unsupported",
            )
        texts = []
        for i, tokens in enumerate(arrays):
            where = f"token array at index {i}"
            if not tokens:
                raise EmbeddingInputError(f"{where} is empty")
            if self.limit is not None:
                check_input_tokens(len(tokens), self.limit, where)
            try:
                text = decode_tokens(tokens, self.encoding)
                # The text a token array stands for meets what any text must.
                texts.append(validate_text(text, max_chars=self.max_text_chars))
            except EmbeddingInputError as exc:
                raise EmbeddingInputError(f"{where}: {exc}") from None
        return texts, sum(map(len, arrays))


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_arrays(items: list[Any]) -> list[list[int]] | None:
    """``items`` as token arrays when they are (one ``list[int]``, or lists only), else None.

    A list holding both lists and other things, or a list of something other than token
    ids, is a 400 here; a list of neither is left to the text checks, which name the item.
    """
    if all(map(_is_token_id, items)):
        return [items]
    if not any(isinstance(item, list) for item in items):
        return None
    for i, item in enumerate(items):
        if not isinstance(item, list):
            raise ApiError(
                400,
                f"'input' is invalid: input at index {i} is not a token array, and 'input' "
                "holds token arrays: send all texts or all token arrays",
                param="input",
            )
        bad = next((j for j, token in enumerate(item) if not _is_token_id(token)), None)
        if bad is not None:
            raise ApiError(
                400,
                f"'input' is invalid: token array at index {i} holds a "
                f"{type(item[bad]).__name__} at offset {bad}; token ids are integers",
                param="input",
            )
    return items


def _encoding_format(value: Any) -> EncodingFormat:
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise ApiError(400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format")


def _dimensions(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, "'dimensions' must be a positive integer.", param="dimensions")
    return value


def _base64(vector: Sequence[float]) -> str:
    return pack_vector(vector).decode("ascii")  # OpenAI's base64: little-endian float32


def render_response(
    request: EmbeddingRequest, vectors: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """OpenAI's response object, vectors in input order, usage as counted when parsed."""
    encode = _base64 if request.encoding_format == "base64" else list
    tokens = request.prompt_tokens
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(vector)}
            for i, vector in enumerate(vectors)
        ],
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
