"""The one vector codec: float32, little-endian, base64 (OpenAI's ``encoding_format=base64``).

The API client decodes the API's vectors with it, the result serializer
(``worker.celery_ext.serialization``) packs results with it and the vector cache stores with
it, so a vector packed on one machine reads the same on any other, whatever its byte order.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from collections.abc import Sequence

__all__ = ["pack_vector", "unpack_vector"]

# array("f") is the machine's byte order; the wire's is little-endian.
_SWAP = sys.byteorder != "little"


def pack_vector(vector: Sequence[float]) -> bytes:
    """``vector`` as base64 of its little-endian float32s."""
    floats = array("f", vector)
    if _SWAP:
        floats.byteswap()
    return base64.b64encode(floats.tobytes())


def unpack_vector(packed: bytes | str) -> list[float]:
    """The floats of a ``pack_vector`` (or OpenAI base64) vector.

    Raises ``ValueError`` when ``packed`` is not base64, or not a whole number of float32s.
    """
    try:
        raw = base64.b64decode(packed, validate=True)
    except binascii.Error as exc:
        raise ValueError("not valid base64") from exc
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes, not float32s")
    floats = array("f")
    floats.frombytes(raw)
    if _SWAP:
        floats.byteswap()
    return floats.tolist()
