"""Read a ``POST /v1/embeddings`` body as OpenAI does, and write its answer.

Parsing is by hand rather than by a pydantic model, so each refusal names the parameter and
says what to do, in OpenAI's words where OpenAI has them, instead of a generic 422.
"""

from __future__ import annotations

import base64
import json
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import ApiError
from gateway.lanes import lane_of_service_tier
from gateway.settings import MAX_INPUTS
from worker.errors import EmbeddingInputError
from worker.validation import validate_texts

__all__ = ["EmbeddingRequest", "estimate_tokens", "parse_request", "render_response"]

EncodingFormat = Literal["float", "base64"]

INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)
TEXT_ONLY = "'input' holds token arrays; this gateway embeds text only: send the strings themselves"


@dataclass(frozen=True)
class EmbeddingRequest:
    """A checked request: ``texts`` in input order; ``dimensions`` None when not asked for.

    ``service_tier_lane`` is the lane its ``service_tier`` asks for (``gateway.lanes``), None
    when it names none; the ``X-Embeddings-Lane`` header, read by the app, wins over it.
    """

    texts: list[str]
    model: str
    encoding_format: EncodingFormat
    dimensions: int | None
    service_tier_lane: str | None = None


def parse_request(body: bytes, *, max_text_chars: int) -> EmbeddingRequest:
    """Check ``body`` fully, or raise a 400 :class:`ApiError` naming the bad parameter."""
    try:
        request = json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(request, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = request.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "you must provide a model parameter", param="model")
    return EmbeddingRequest(
        texts=_texts(request, max_text_chars),
        model=model,
        encoding_format=_encoding_format(request.get("encoding_format")),
        dimensions=_dimensions(request.get("dimensions")),
        service_tier_lane=lane_of_service_tier(request.get("service_tier")),
    )


def _texts(request: dict[str, Any], max_text_chars: int) -> list[str]:
    if "input" not in request:
        raise ApiError(400, "'input' is a required property", param="input")
    raw = request["input"]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise ApiError(400, INVALID_INPUT, param="input")
    if _is_token_array(items):
        raise ApiError(400, TEXT_ONLY, param="input", code="token_arrays_unsupported")
    if len(items) > MAX_INPUTS:
        raise ApiError(
            400, f"Too many inputs. The max number of inputs is {MAX_INPUTS}.", param="input"
        )
    try:
        # The producers' own checks: empty, whitespace-only, NUL, lone surrogate, too long.
        return validate_texts(items, max_chars=max_text_chars)
    except EmbeddingInputError as exc:
        raise ApiError(400, f"'input' is invalid: {exc}", param="input") from None


def _is_token_array(items: list[Any]) -> bool:
    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if all(is_int(item) for item in items):
        return True
    return all(isinstance(item, list) and item and all(map(is_int, item)) for item in items)


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


def estimate_tokens(text: str) -> int:
    """``ceil(len(text) / 4)``, at least 1: the workers return no per-text token counts."""
    return max(1, -(-len(text) // 4))


def _base64(vector: Sequence[float]) -> str:
    # OpenAI's base64: little-endian float32.
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def render_response(
    request: EmbeddingRequest, vectors: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """OpenAI's response object, vectors in input order, usage estimated (see above)."""
    encode = _base64 if request.encoding_format == "base64" else list
    tokens = sum(map(estimate_tokens, request.texts))
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(vector)}
            for i, vector in enumerate(vectors)
        ],
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
