"""Embeddings semantics: deterministic unit vectors, request validation and response encoding."""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from array import array
from functools import lru_cache

from worker.tokens import CL100K_BASE, MAX_INPUT_TOKENS, token_counter
from worker.vector_codec import pack_vector

__all__ = [
    "DEFAULT_DIMENSIONS",
    "INPUT_TOO_LONG_MESSAGE",
    "INVALID_INPUT_MESSAGE",
    "MAX_DIMENSIONS",
    "MAX_INPUTS",
    "RequestError",
    "embedding_base64",
    "embedding_json",
    "embeddings_response",
    "input_tokens",
    "parse_embeddings_request",
    "vector_for",
]

DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 16384
MAX_INPUTS = 2048
INVALID_INPUT_MESSAGE = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
# OpenAI's words for an input over the model's limit: the whole call fails, naming neither
# the input nor its count, so a client must split the call to find it.
INPUT_TOO_LONG_MESSAGE = f"Invalid 'input': maximum context length is {MAX_INPUT_TOKENS} tokens."

# Eight decimals keep the JSON about half the size of repr() and, more importantly,
# let one C-level %-format call render a whole vector (repr per float is ~2x slower).
_DECIMALS = 8
# Bounded so a long benchmark with unique texts cannot grow memory without limit
# (~18 KB of JSON per 1536-dim vector).
_CACHE_SIZE = 4096


def _check_dimensions(dimensions: int) -> None:
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"dimensions must be between 1 and {MAX_DIMENSIONS}, got {dimensions}")


def _raw_vector(text: str, dimensions: int) -> array[float]:
    # surrogatepass: JSON may carry lone surrogates, which must not crash the handler.
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    seed = int.from_bytes(digest[:8], "big")
    # Uniform int16 components from randbytes are ~5x cheaper than random.gauss per value
    # and, for nearly orthogonal random directions, just as good a stand-in.
    components = array("h", random.Random(seed).randbytes(2 * dimensions))
    if sys.byteorder != "little":
        components.byteswap()  # same vectors on every platform
    norm = math.hypot(*components)
    if norm == 0.0:
        # All-zero draws are only plausible for tiny dimensions; any fixed unit vector will do.
        return array("d", [1.0] + [0.0] * (dimensions - 1))
    return array("d", map((1.0 / norm).__mul__, components))


@lru_cache(maxsize=32)
def _template(dimensions: int) -> str:
    return "[" + ",".join([f"%.{_DECIMALS}f"] * dimensions) + "]"


@lru_cache(maxsize=_CACHE_SIZE)
def embedding_json(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> str:
    """Return the JSON array text of the embedding, exactly as the server sends it."""
    _check_dimensions(dimensions)
    return _template(dimensions) % tuple(_raw_vector(text, dimensions))


def vector_for(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """Return the embedding served for ``text``; equal (==) to what a JSON client parses."""
    # Parsing the served JSON makes the rounded decimals the single source of truth,
    # so callers can compare with == instead of a tolerance.
    values: list[float] = json.loads(embedding_json(text, dimensions))
    return values


@lru_cache(maxsize=_CACHE_SIZE)
def embedding_base64(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> str:
    """Return base64 of the little-endian float32 form of ``vector_for(text, dimensions)``."""
    return pack_vector(vector_for(text, dimensions)).decode("ascii")


def input_tokens(texts: list[str]) -> int:
    """The tokens of ``texts`` as OpenAI counts them for its embedding models (cl100k_base,
    with the worker's own tokenizer); ``RequestError`` when one is over ``MAX_INPUT_TOKENS``."""
    count = token_counter(CL100K_BASE)
    total = 0
    for text in texts:
        tokens = count(text)
        if tokens > MAX_INPUT_TOKENS:
            raise RequestError(INPUT_TOO_LONG_MESSAGE, None)
        total += tokens
    return total


def embeddings_response(
    texts: list[str], model: str, encoding_format: str, dimensions: int, tokens: int
) -> bytes:
    """Serialise an OpenAI-style embeddings response body for ``texts``, in input order, with
    ``tokens`` (``input_tokens(texts)``) as its usage."""
    # Assembled from cached per-text fragments: json.dumps of 2,000 x 1,536 floats takes
    # seconds, which would make the stub the bottleneck of any benchmark.
    if encoding_format == "base64":
        vectors = ['"' + embedding_base64(text, dimensions) + '"' for text in texts]
    else:
        vectors = [embedding_json(text, dimensions) for text in texts]
    data = ",".join(
        f'{{"object":"embedding","index":{i},"embedding":{v}}}' for i, v in enumerate(vectors)
    )
    usage = f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}'
    return (
        f'{{"object":"list","data":[{data}],"model":{json.dumps(model)},"usage":{usage}}}'.encode()
    )


class RequestError(ValueError):
    """An embeddings request the real API would answer with HTTP 400."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def parse_embeddings_request(
    body: bytes, *, default_dimensions: int, max_inputs: int, reject_substring: str
) -> tuple[list[str], str, str, int]:
    """Validate a body like OpenAI does; return (texts, model, encoding_format, dimensions)."""
    try:
        request = json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        raise RequestError("We could not parse the JSON body of your request.", None) from None
    if not isinstance(request, dict):
        raise RequestError("The request body must be a JSON object.", None)
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("you must provide a model parameter", "model")
    if "input" not in request:
        raise RequestError("'input' is a required property", "input")
    texts = [request["input"]] if isinstance(request["input"], str) else request["input"]
    if (
        not isinstance(texts, list)
        or not texts
        or not all(isinstance(t, str) and t.strip() for t in texts)
    ):
        raise RequestError(INVALID_INPUT_MESSAGE, "input")
    if len(texts) > max_inputs:
        raise RequestError(f"Too many inputs. The max number of inputs is {max_inputs}.", "input")
    # Deliberately silent about which input matched, so clients must bisect the batch.
    if reject_substring and any(reject_substring in t for t in texts):
        raise RequestError("Invalid input: request contains disallowed content.", "input")
    encoding = request.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    dimensions = request.get("dimensions")
    dimensions = default_dimensions if dimensions is None else dimensions
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise RequestError(
            f"'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}.", "dimensions"
        )
    return texts, model, encoding, dimensions
