"""Token counts per model: exact for OpenAI's cl100k_base, a conservative estimate otherwise.

The shared budget admits a call on its tokens before the call is made (worker/budget), and
the stub API charges and reports them (stubapi/): both count here, so for OpenAI's
embedding models they agree with each other and with the API's ``usage``.

Encodings (``ENCODINGS``), chosen per model by ``Settings.encoding_for``:

- ``cl100k_base`` (text-embedding-3-small, -3-large, ada-002): tiktoken, OpenAI's own BPE,
  built from ``cl100k_base.tiktoken`` shipped beside this module. tiktoken would download
  that file at run time, which an offline worker cannot; the copy here is checked against
  the SHA-256 tiktoken itself pins before it is used.
- ``estimate``: one token per two UTF-8 bytes, for models whose tokenizer is unknown (other
  providers). It over-counts English and code about 2×, and the call's ``usage`` settles it.

Why tiktoken and not bpe-openai or HF tokenizers: docs/design.md, "Exact tokens".
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING

from worker.errors import EmbeddingConfigError, EmbeddingInputError

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "CL100K_BASE",
    "ENCODINGS",
    "ESTIMATE",
    "MAX_INPUT_TOKENS",
    "MODEL_ENCODINGS",
    "count_tokens",
    "decode_tokens",
    "estimate_tokens",
    "loaded_counter",
    "token_counter",
    "vocabulary_size",
]

log = logging.getLogger(__name__)

CL100K_BASE = "cl100k_base"
ESTIMATE = "estimate"
ENCODINGS = (CL100K_BASE, ESTIMATE)
# OpenAI's embedding models and their encoding (tiktoken's own model table says the same).
MODEL_ENCODINGS: Mapping[str, str] = MappingProxyType(
    {
        "text-embedding-3-small": CL100K_BASE,
        "text-embedding-3-large": CL100K_BASE,
        "text-embedding-ada-002": CL100K_BASE,
    }
)
# OpenAI refuses an input of more tokens than this to any of the models above.
MAX_INPUT_TOKENS = 8192

# The file OpenAI publishes for tiktoken, byte for byte: tiktoken_ext/openai_public.py pins
# this hash for the download it would make.
_CL100K_FILE = "cl100k_base.tiktoken"
_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# tiktoken_ext/openai_public.py's cl100k_base pattern: it splits text into the pieces BPE
# merges within, so it is part of the encoding as much as the ranks are.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

_load_lock = threading.Lock()
_counters: dict[str, Callable[[str], int]] = {ESTIMATE: lambda text: estimate_tokens(text)}
_encodings: dict[str, tiktoken.Encoding] = {}  # guarded by _load_lock
_background: dict[str, threading.Thread] = {}  # guarded by _background_lock
_background_lock = threading.Lock()


def estimate_tokens(text: str) -> int:
    """A token count for ``text`` of an unknown tokenizer: one per two UTF-8 bytes, at least 1.

    BPE tokens cover 3-4 bytes of natural language and code, so this over-counts them; text
    dense in emoji or rare scripts can take more tokens than this, which ``usage`` settles.
    """
    return max(1, math.ceil(len(text.encode("utf-8", "surrogatepass")) / 2))


def token_counter(encoding: str) -> Callable[[str], int]:
    """The function counting one text's tokens in ``encoding`` (one of ``ENCODINGS``).

    cl100k_base is loaded on first use, once per process (about 0.3 s, which this waits
    for), then costs about 12 µs per short text; tiktoken releases the GIL while it encodes.
    """
    counter = _counters.get(encoding)
    if counter is not None:
        return counter
    _check(encoding)
    with _load_lock:
        if encoding not in _counters:
            loaded = _load_cl100k()
            encode = loaded.encode_ordinary  # special-token text counts as the plain text
            _encodings[encoding] = loaded
            _counters[encoding] = lambda text: len(encode(text))
        return _counters[encoding]


def vocabulary_size(encoding: str) -> int | None:
    """How many token ids ``encoding`` has (ids are 0 to this less one); None: the estimate,
    which has no tokens to decode. Loads the encoding like ``token_counter``."""
    if encoding == ESTIMATE:
        return None
    return _encoding(encoding).n_vocab


def decode_tokens(tokens: Sequence[int], encoding: str) -> str:
    """The text ``tokens`` encode in ``encoding`` (not ``estimate``, which cannot decode).

    Raises ``EmbeddingInputError`` naming the first id outside the vocabulary and its
    offset. Bytes that are not UTF-8, as when an array is cut inside
    a character (LangChain cuts long texts every 8,191 tokens), become U+FFFD, as tiktoken's
    own ``decode`` does, so no array is refused for where it was cut.
    """
    loaded = _encoding(encoding)
    size = loaded.n_vocab
    for offset, token in enumerate(tokens):
        if not 0 <= token < size:
            raise EmbeddingInputError(
                f"token id {token} at offset {offset} is not in {encoding} (ids 0 to {size - 1})"
            )
    return loaded.decode_bytes(tokens).decode("utf-8", errors="replace")


def _encoding(name: str) -> tiktoken.Encoding:
    _check(name)
    if name == ESTIMATE:
        raise EmbeddingConfigError("the estimate has no tokens to decode: it counts bytes")
    token_counter(name)  # loads it once, as counting does
    return _encodings[name]


def loaded_counter(encoding: str) -> Callable[[str], int] | None:
    """``token_counter(encoding)`` if it is loaded; else None at once, and it loads in a
    background thread (a load that fails logs one ERROR, and this stays None)."""
    counter = _counters.get(encoding)
    if counter is None:
        _check(encoding)
        with _background_lock:
            if encoding not in _background:
                loader = threading.Thread(
                    target=_load_in_background, args=(encoding,), name=f"load-{encoding}"
                )
                loader.daemon = True
                _background[encoding] = loader
                loader.start()
    return counter


def count_tokens(texts: Iterable[str], encoding: str) -> int:
    """The tokens of ``texts`` together in ``encoding``: what the API's ``usage`` reports."""
    return sum(map(token_counter(encoding), texts))


def _check(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise EmbeddingConfigError(
            f"unknown token encoding {encoding!r}: one of {', '.join(ENCODINGS)}"
        )


def _load_in_background(encoding: str) -> None:
    try:
        token_counter(encoding)
    except EmbeddingConfigError as exc:
        log.error("%s; counting tokens by the estimate instead", exc)


def _load_cl100k() -> tiktoken.Encoding:
    # Imported here: a producer or the gateway that never counts tokens never loads it.
    import tiktoken

    data = resources.files(__package__).joinpath(_CL100K_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != _CL100K_SHA256:
        raise EmbeddingConfigError(
            f"worker/tokens/{_CL100K_FILE} is damaged (sha256 {digest}, expected "
            f"{_CL100K_SHA256}): reinstall embedding-queue"
        )
    # One "base64-token rank" pair per line; whitespace-split pairs parse in half the time.
    fields = data.split()
    ranks = dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))
    # No special tokens: their text counts as the plain text it is, and their ids (100257
    # on) are not ids an embedding input may hold.
    return tiktoken.Encoding(
        CL100K_BASE, pat_str=_CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={}
    )
