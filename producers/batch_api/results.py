"""Reading a batch's output and error files: one ``LineResult`` per request, by custom id.

A 200 gives a vector and its tokens (from the response's ``usage``). A 4xx names why the API
rejected the text: the line gets an error record. A request the batch never ran (expired,
cancelled) or one a transient 429/5xx stopped is unfinished: it goes in the next batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from worker.vector_codec import unpack_vector

__all__ = ["LineResult", "read_result"]

_UNFINISHED_CODES = frozenset({"batch_expired", "batch_cancelled"})
_TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class LineResult:
    """A vector, or an error for the record, or neither: unfinished (why in ``reason``)."""

    vector: list[float] | None = None
    error: str | None = None
    tokens: int = 0
    reason: str = ""

    @property
    def unfinished(self) -> bool:
        return self.vector is None and self.error is None


def _vector(embedding: Any) -> list[float]:
    if isinstance(embedding, str):
        return unpack_vector(embedding)
    if isinstance(embedding, list) and all(isinstance(x, (int, float)) for x in embedding):
        return [float(x) for x in embedding]
    raise ValueError("an embedding is neither base64 nor a list of numbers")


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or "")
    return ""


def read_result(raw: bytes) -> tuple[str, LineResult]:
    """``(custom_id, result)`` of one output or error line; ValueError if it is not one."""
    record = json.loads(raw)
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
        raise ValueError("a result line without a custom_id")
    custom_id: str = record["custom_id"]
    response = record.get("response")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        if status == 200 and isinstance(body, dict):
            (first,) = body["data"]
            tokens = int((body.get("usage") or {}).get("total_tokens") or 0)
            return custom_id, LineResult(vector=_vector(first["embedding"]), tokens=tokens)
        if status in _TRANSIENT_STATUSES:
            return custom_id, LineResult(reason=f"HTTP {status}")
        error = (
            f"EmbeddingAPIError: the Batch API answered {status} for this text: {_message(body)}"
        )
        return custom_id, LineResult(error=error)
    error_info = record.get("error")
    code = str(error_info.get("code") or "") if isinstance(error_info, dict) else ""
    if code in _UNFINISHED_CODES or not code:
        return custom_id, LineResult(reason=code or "no answer")
    message = str(error_info.get("message") or "") if isinstance(error_info, dict) else ""
    return custom_id, LineResult(error=f"EmbeddingAPIError: {code}: {message}")
