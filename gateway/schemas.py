"""The OpenAPI description of the gateway: exactly what it accepts, refuses and answers.

Requests are parsed by ``gateway.parsing`` (so refusals read as OpenAI's do) and responses
are written as plain JSON; this module describes both at ``/openapi.json`` and ``/docs``.
The request schema carries the limits the gateway enforces, from its settings (the models
served, the longest text, the vector size), so a request valid by the schema is one the
gateway takes: ``scripts/bench schema`` runs schemathesis with every check to hold it to that.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from gateway.lanes import LANE_HEADER, SERVICE_TIER_LANES
from gateway.settings import MAX_IDEMPOTENCY_KEY_CHARS, MAX_INPUTS, GatewaySettings
from producers.lanes import LANES

__all__ = [
    "BEARER_SCHEME",
    "IDEMPOTENCY_HEADER",
    "MAX_TOKENS_PER_INPUT",
    "TEXT_PATTERN",
    "ErrorBody",
    "HealthBody",
    "embeddings_operation",
    "models_operation",
    "request_body_schema",
    "security_schemes",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
BEARER_SCHEME = "bearerAuth"
# OpenAI's limit of tokens per input: the longest token array one input may be.
MAX_TOKENS_PER_INPUT = 8192
# At least one character that is not whitespace, and no NUL anywhere (worker.validation).
TEXT_PATTERN = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"


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


class HealthBody(BaseModel):
    """``GET /healthz``: ``workers`` and the depths are null when unknown."""

    status: Literal["ok", "unavailable"]
    redis: bool
    workers: int | None
    queue_depth: int | None
    lanes: dict[str, int] | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


def _text(settings: GatewaySettings) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": settings.max_text_chars,
        "pattern": TEXT_PATTERN,
        "description": "Not empty or whitespace-only, no NUL, at most EMBEDDINGS_MAX_TEXT_CHARS "
        f"({settings.max_text_chars}) characters.",
    }


_TOKENS: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_TOKENS_PER_INPUT,
    "items": {"type": "integer", "minimum": 0},
}


def request_body_schema(settings: GatewaySettings) -> dict[str, Any]:
    """The JSON schema of ``POST /v1/embeddings``'s body, with the limits of ``settings``."""
    text = _text(settings)
    dimensions: dict[str, Any] = (
        {"type": ["integer", "null"], "enum": [settings.dimensions, None]}
        if settings.dimensions
        else {"type": ["integer", "null"], "minimum": 1}
    )
    return {
        "type": "object",
        "title": "EmbeddingsBody",
        "required": ["input", "model"],
        "properties": {
            "input": {
                "description": f"A text, up to {MAX_INPUTS} texts, a token array (one input), "
                f"or up to {MAX_INPUTS} token arrays, as OpenAI takes them.",
                "anyOf": [
                    text,
                    {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": text},
                    _TOKENS,
                    {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": _TOKENS},
                ],
            },
            "model": {
                "type": "string",
                "enum": list(settings.models),
                "description": "One of GATEWAY_MODELS (GET /v1/models); any other is a 404 "
                "model_not_found.",
            },
            "encoding_format": {
                "enum": ["float", "base64", None],
                "default": "float",
                "description": "base64: little-endian float32, as OpenAI sends it; about 3x "
                "faster through the gateway than float for large requests.",
            },
            "dimensions": {
                **dimensions,
                "description": "Only the workers' size is served (EMBEDDINGS_DIMENSIONS; when "
                "0, the model's native size, known once the vectors are back).",
            },
            "service_tier": {
                "enum": [*SERVICE_TIER_LANES, None],
                "description": "The queue's lane: 'flex' is the bulk lane (served after "
                "interactive texts); 'auto', 'default', 'priority' or none the interactive "
                f"lane. The {LANE_HEADER} header wins over it.",
            },
            "user": {"description": "Accepted and ignored."},
        },
    }


def _parameters() -> list[dict[str, Any]]:
    return [
        {
            "name": LANE_HEADER,
            "in": "header",
            "required": False,
            "description": "The queue's lane for this request's texts: 'interactive' (the "
            "default) or 'bulk' (a backfill, served after interactive texts). Wins over the "
            "body's service_tier; any other value is a 400.",
            "schema": {"type": "string", "enum": list(LANES), "default": LANES[0]},
        },
        {
            "name": IDEMPOTENCY_HEADER,
            "in": "header",
            "required": False,
            "description": "Names this request: a retry with the same key and body waits on "
            "the first attempt's texts instead of enqueueing them again; the same key with "
            "another body is a 422 idempotency_key_reused.",
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
                "pattern": "\\S",
            },
        },
    ]


_ERRORS = {
    400: "Bad JSON, input, dimensions, service_tier or lane header; or the API rejected a text",
    401: "Missing or wrong API key (Authorization: Bearer)",
    404: "model_not_found: a model not in GATEWAY_MODELS, or one the API does not know",
    409: "request_in_progress: the same request is still being enqueued; retry",
    413: "Body over GATEWAY_MAX_BODY_BYTES",
    422: "idempotency_key_reused: this Idempotency-Key came with another body",
    429: "The request's lane's queue is over GATEWAY_MAX_QUEUE_DEPTH",
    502: "The upstream API failed, or refused the workers' credentials",
    503: "Redis unreachable; no vectors within GATEWAY_REQUEST_TIMEOUT_S (no_workers, "
    "queue_too_deep, timeout); upstream unavailable; too many connections",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}
_ESTIMATE = {
    "X-Embeddings-Estimated-Seconds": {
        "description": "Sent for requests of 256 texts or more: the estimated time to embed "
        "them behind the texts already queued.",
        "schema": {"type": "string"},
    }
}


def _error_responses(statuses: list[int]) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {"model": ErrorBody, "description": _ERRORS[status]}
        if status == 429:
            response["headers"] = _RETRY_AFTER
        responses[status] = response
    return responses


def embeddings_operation(settings: GatewaySettings) -> dict[str, Any]:
    """``POST /v1/embeddings``'s route arguments: its body, headers, answers and security."""
    return {
        "responses": {
            200: {
                "model": EmbeddingsResponse,
                "description": "Vectors in input order",
                "headers": _ESTIMATE,
            },
            **_error_responses([400, 401, 404, 409, 413, 422, 429, 502, 503]),
        },
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_body_schema(settings)}},
            },
            "parameters": _parameters(),
            **_security(settings),
        },
    }


def models_operation(settings: GatewaySettings) -> dict[str, Any]:
    """``GET /v1/models``'s route arguments."""
    return {"responses": _error_responses([401]), "openapi_extra": _security(settings)}


def _security(settings: GatewaySettings) -> dict[str, Any]:
    return {"security": [{BEARER_SCHEME: []}]} if settings.api_keys else {}


def security_schemes(settings: GatewaySettings) -> dict[str, Any]:
    """``components.securitySchemes``: the bearer key, when the gateway asks for one."""
    if not settings.api_keys:
        return {}
    return {
        BEARER_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "One of GATEWAY_API_KEYS.",
        }
    }
