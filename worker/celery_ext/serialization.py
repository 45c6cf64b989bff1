"""A compact result serializer: JSON, with each embedding vector as base64 float32.

A 1,536-dimension vector is about 30 KB as JSON floats and 8 KB this way, which is less to
encode, store in Redis and publish. ``AsyncResult.get()`` still returns a list of floats.
Only the float lists of a result are packed; everything else stays plain JSON, and
decoding never runs code (no pickle). Vectors are stored as little-endian float32
(``worker.vector_codec``), the form OpenAI's own ``encoding_format=base64`` uses.

Nothing happens at import: ``worker.celery_ext.install`` registers the serializer with kombu
and replaces Celery's rendering of vector results (``install_short_result_repr``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from kombu.serialization import register

from worker.vector_codec import pack_vector, unpack_vector

__all__ = [
    "CONTENT_TYPE",
    "SERIALIZER_NAME",
    "dumps",
    "install_short_result_repr",
    "loads",
    "register_serializer",
]

SERIALIZER_NAME = "embedding-json"
CONTENT_TYPE = "application/x-embedding-json"
_MARKER = "__f32_b64__"
# Short lists stay JSON: packing saves nothing there and keeps small values readable.
_MIN_PACKED_LENGTH = 8
_ONLY_FLOATS = {float}


def _is_vector(value: object) -> bool:
    # set(map(type, ...)) runs in C, unlike a generator over the 1,536 items of a vector.
    return (
        isinstance(value, list)
        and len(value) >= _MIN_PACKED_LENGTH
        and set(map(type, value)) == _ONLY_FLOATS
    )


def _pack(value: Any) -> Any:
    if _is_vector(value):
        return {_MARKER: pack_vector(value).decode("ascii")}
    if isinstance(value, dict):
        return {k: _pack(v) for k, v in value.items()}
    return value


def _unpack(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _MARKER in obj:
        return unpack_vector(obj[_MARKER])
    return obj


def dumps(value: Any) -> str:
    """Encode ``value`` (a Celery result meta dict) with its vectors packed."""
    return json.dumps(_pack(value), separators=(",", ":"))


def loads(data: str | bytes) -> Any:
    """Decode what ``dumps`` wrote; packed vectors come back as lists of floats."""
    return json.loads(data, object_hook=_unpack)


def register_serializer() -> None:
    """Make the serializer known to kombu in this process (idempotent)."""
    register(  # type: ignore[no-untyped-call]
        SERIALIZER_NAME, dumps, loads, content_type=CONTENT_TYPE, content_encoding="utf-8"
    )


def _summarising(saferepr: Callable[..., str]) -> Callable[..., str]:
    def summarised(o: Any, maxlen: int | None = None, *args: Any, **kwargs: Any) -> str:
        if type(o) is list and len(o) >= _MIN_PACKED_LENGTH and type(o[0]) is float:
            return f"[{o[0]!r}, {o[1]!r}, ... {len(o)} floats]"
        return saferepr(o, maxlen, *args, **kwargs)

    summarised.summarises_vectors = True  # type: ignore[attr-defined]
    return summarised


def install_short_result_repr() -> None:
    """Show a vector result as its first values and length in worker logs and events.

    Celery renders every return value with ``saferepr`` for the success log line and the
    ``task-succeeded`` event (Flower's "result" column). On a 1,536-float list that walks
    the whole list in Python even though it keeps only 1,024 characters (its cost under
    load is in docs/benchmark.md). Other values keep Celery's rendering. Idempotent.
    Replaces celery 5.7.0 celery/app/trace.py's module-level ``saferepr``.
    """
    from celery.app import trace

    if not getattr(trace.saferepr, "summarises_vectors", False):
        trace.saferepr = _summarising(trace.saferepr)
