"""Errors as OpenAI shapes them: ``{"error": {"message", "type", "param", "code"}}``.

:func:`error_for` maps the project's exception tree to an HTTP status:

- 400 ``invalid_request_error``: a bad request or input (``EmbeddingInputError``), or the
  API rejected a text with a 4xx (``EmbeddingAPIError``); the API's message is passed on.
- 404 ``model_not_found``: the upstream API answered 404 (a model it does not serve).
- 502 ``server_error``: the API refused the workers' own key (401/403), answered with
  something unusable (``EmbeddingFatalError``), or a task raised anything else.
- 503 ``server_error``: Redis unreachable, no result within the request timeout, or the
  task's retries spent on a transient failure (``EmbeddingRetryableError``). Clients retry.

Messages never carry keys or upstream credentials: the API's own message is passed on only
for 4xx rejections of the caller's input.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from worker.errors import (
    EmbeddingAPIError,
    EmbeddingError,
    EmbeddingFatalError,
    EmbeddingInputError,
    EmbeddingQueueUnavailableError,
    EmbeddingResultStoreUnavailableError,
    EmbeddingResultTimeoutError,
    EmbeddingRetryableError,
)

__all__ = ["ApiError", "error_body", "error_for", "model_not_found"]

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(HTTPException):
    """An HTTP error answered in OpenAI's shape (a FastAPI ``HTTPException``)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def model_not_found(model: str) -> ApiError:
    """OpenAI's answer for a model it does not serve: 404 ``model_not_found``."""
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def error_for(exc: BaseException, *, timeout_s: float) -> ApiError:
    """The answer for ``exc``, raised while embedding a request's texts."""
    if isinstance(exc, EmbeddingInputError):
        return ApiError(400, str(exc), param="input")
    if isinstance(exc, EmbeddingAPIError):
        if exc.status_code in (401, 403):
            # The upstream API refused the workers' credentials: not the caller's fault.
            return ApiError(
                502,
                "the upstream embeddings API refused this deployment's credentials",
                type=SERVER_ERROR,
                code="upstream_auth_failed",
            )
        if exc.status_code == 404:
            # The upstream API does not know the model: OpenAI's own answer to a caller.
            return ApiError(
                404,
                exc.api_message or "The model does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return ApiError(400, exc.api_message or str(exc), param="input")
    if isinstance(exc, EmbeddingResultTimeoutError):
        return ApiError(
            503,
            f"no embedding within {timeout_s:g} s; the queue is busy, try again later",
            type=SERVER_ERROR,
            code="timeout",
        )
    if isinstance(exc, EmbeddingQueueUnavailableError | EmbeddingResultStoreUnavailableError):
        return ApiError(
            503, "the embedding queue is unavailable", type=SERVER_ERROR, code="queue_unavailable"
        )
    if isinstance(exc, EmbeddingRetryableError):
        return ApiError(
            503,
            f"the embeddings API is unavailable ({type(exc).__name__}); try again later",
            type=SERVER_ERROR,
            code="upstream_unavailable",
        )
    if isinstance(exc, EmbeddingFatalError | EmbeddingError):
        return ApiError(
            502,
            f"the upstream embeddings API failed ({type(exc).__name__})",
            type=SERVER_ERROR,
            code="upstream_error",
        )
    return ApiError(502, f"the embedding task failed ({type(exc).__name__})", type=SERVER_ERROR)
