"""The one vector codec: little-endian float32 in base64, whatever the machine's byte order."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from worker import vector_codec
from worker.celery_ext import serialization
from worker.vector_codec import pack_vector, unpack_vector

VECTOR = [0.25, -1.5, 3.0, 0.125, 8.0, -0.5, 1.0, 2.0]


def test_a_vector_packs_to_little_endian_float32_and_back() -> None:
    packed = pack_vector(VECTOR)
    assert base64.b64decode(packed) == struct.pack(f"<{len(VECTOR)}f", *VECTOR)
    assert unpack_vector(packed) == VECTOR
    assert unpack_vector(packed.decode("ascii")) == VECTOR


def test_on_a_big_endian_machine_the_floats_are_swapped_to_little_endian(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Stand in for a big-endian machine: array("f") there holds big-endian floats.
    class BigEndianArray:
        def __init__(self, typecode: str, values: list[float] | None = None) -> None:
            self.values = list(values or [])
            self.swapped = False

        def byteswap(self) -> None:
            self.swapped = not self.swapped

        def tobytes(self) -> bytes:
            order = "<" if self.swapped else ">"
            return struct.pack(f"{order}{len(self.values)}f", *self.values)

        def frombytes(self, raw: bytes) -> None:
            self.values = list(struct.unpack(f">{len(raw) // 4}f", raw))

        def tolist(self) -> list[float]:
            order_ok = struct.pack(f">{len(self.values)}f", *self.values)
            values = struct.unpack(f"{'<' if self.swapped else '>'}{len(self.values)}f", order_ok)
            return list(values)

    monkeypatch.setattr(vector_codec, "array", BigEndianArray)
    monkeypatch.setattr(vector_codec, "_SWAP", True)
    packed = pack_vector(VECTOR)
    assert base64.b64decode(packed) == struct.pack(f"<{len(VECTOR)}f", *VECTOR)
    assert unpack_vector(packed) == VECTOR


@pytest.mark.parametrize(
    ("packed", "reason"),
    [("not base64!", "not valid base64"), (base64.b64encode(b"12345").decode(), "5 bytes")],
)
def test_a_malformed_vector_raises_saying_why(packed: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        unpack_vector(packed)


def test_results_are_stored_in_the_codecs_form() -> None:
    stored = json.loads(serialization.dumps({"result": VECTOR}))
    (packed,) = stored["result"].values()
    assert base64.b64decode(packed) == struct.pack(f"<{len(VECTOR)}f", *VECTOR)
    assert serialization.loads(serialization.dumps({"result": VECTOR})) == {"result": VECTOR}
