"""Pydantic models of the request, response and error bodies, for the OpenAPI docs only.

Requests are parsed by ``gateway.parsing`` (so refusals read as OpenAI's do) and responses
are written as plain JSON; these models describe both at ``/docs``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from gateway.lanes import LANE_HEADER
from gateway.settings import MAX_INPUTS
from producers.lanes import LANES

__all__ = ["OPENAPI_LANE_HEADER", "OPENAPI_REQUEST_BODY", "RESPONSES"]


class EmbeddingsBody(BaseModel):
    """``POST /v1/embeddings``: ``user`` is accepted and ignored."""

    input: str | list[str] = Field(
        description=f"A text, or up to {MAX_INPUTS} texts; token arrays are refused."
    )
    model: str = Field(description="Passed to the workers with each text.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32, as OpenAI sends it."
    )
    dimensions: int | None = Field(
        None, description="Only the workers' configured size (EMBEDDINGS_DIMENSIONS) is served."
    )
    service_tier: Literal["auto", "default", "flex", "priority"] | None = Field(
        None,
        description="The queue's lane: 'flex' is the bulk lane (served after interactive "
        "texts); 'auto', 'default', 'priority' or none the interactive lane. The "
        f"{LANE_HEADER} header wins over it.",
    )
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Estimated as ceil(characters / 4) per text: workers return no token counts."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


OPENAPI_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EmbeddingsBody.model_json_schema()}},
    }
}

OPENAPI_LANE_HEADER: dict[str, Any] = {
    "parameters": [
        {
            "name": LANE_HEADER,
            "in": "header",
            "required": False,
            "description": "The queue's lane for this request's texts: 'interactive' (the "
            "default) or 'bulk' (a backfill, served after interactive texts). Wins over the "
            "body's service_tier; any other value is a 400.",
            "schema": {"type": "string", "enum": list(LANES), "default": LANES[0]},
        }
    ]
}

_ERRORS = {
    400: "Bad request, input, service_tier or lane header; the API rejected a text",
    401: "Missing or wrong API key",
    413: "Body over GATEWAY_MAX_BODY_BYTES",
    429: "The request's lane's queue over GATEWAY_MAX_QUEUE_DEPTH",
    502: "The upstream API failed",
    503: "Redis unreachable, timeout, or upstream unavailable",
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": EmbeddingsResponse, "description": "Vectors in input order"},
    **{status: {"model": ErrorBody, "description": why} for status, why in _ERRORS.items()},
}
