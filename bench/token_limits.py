"""``python -m bench.token_limits``: what the token-limit check adds to validating a text.

Times ``worker.validation.validate_text`` without and with the model's ``TokenLimit``
(cl100k_base, 8,192 tokens), best of 7 passes, on: the 2,000 lines of samples/texts.txt;
texts under 2,048 characters (no bytes looked at); ASCII and non-ASCII texts of at most
8,192 UTF-8 bytes (not tokenized); texts over 8,192 bytes (tokenized); and issue #23's
23,689-character text of numbers (tokenized, refused). Prints a table for docs/design.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from devstack import REPO_ROOT
from tests.overlong import numbers_text
from worker.errors import EmbeddingInputError
from worker.settings import DEFAULT_MAX_TEXT_CHARS, Settings
from worker.tokens import CL100K_BASE, token_counter
from worker.validation import TokenLimit, token_limit, validate_text

SAMPLES = REPO_ROOT / "samples" / "texts.txt"


def _best_us(texts: list[str], check: Callable[[str], object], passes: int = 7) -> float:
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for text in texts:
            with contextlib.suppress(EmbeddingInputError):  # the refused text is timed too
                check(text)
        best = min(best, time.perf_counter() - started)
    return best / len(texts) * 1e6


def main() -> None:
    limit = token_limit(Settings(), None)
    assert isinstance(limit, TokenLimit)
    token_counter(CL100K_BASE)  # loaded before timing, as a worker or gateway has it
    samples = [line for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
    prose = "The quick brown fox jumps over the lazy dog. "
    cases = {
        "samples/texts.txt (2,000 lines, 77 chars avg)": samples,
        "1,900 ASCII chars (length only)": [prose * 42 + str(i) for i in range(200)],
        "8,000 ASCII chars (isascii, not tokenized)": [prose * 177 + str(i) for i in range(50)],
        "2,700 chars of 日本語, 8,100 bytes (encoded, not tokenized)": [
            "日本語のテキスト" * 337 + str(i) for i in range(50)
        ],
        "18,000 ASCII chars (tokenized, 4,001 tokens)": [prose * 400 + str(i) for i in range(20)],
        "issue #23's numbers (tokenized, refused)": [numbers_text()] * 5,
    }
    print("| texts | without the token check: µs/text | with it: µs/text | added |")
    print("|---|---:|---:|---:|")
    for name, texts in cases.items():

        def plain(text: str) -> object:
            return validate_text(text, max_chars=DEFAULT_MAX_TEXT_CHARS)

        def checked(text: str) -> object:
            return validate_text(text, max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=limit)

        before, after = _best_us(texts, plain), _best_us(texts, checked)
        print(f"| {name} | {before:,.2f} | {after:,.2f} | {after - before:+,.2f} |")


if __name__ == "__main__":
    main()
