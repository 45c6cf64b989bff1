"""Issue #23's over-long text: within ``EMBEDDINGS_MAX_TEXT_CHARS``, over OpenAI's tokens."""

from __future__ import annotations

import random

NUMBERS_CHARS = 23_689
NUMBERS_TOKENS = 11_713  # in cl100k_base; tests check it with the tokenizer, not trust it


def numbers_text() -> str:
    """23,689 characters of numbers that cl100k_base counts as 11,713 tokens.

    262 six-digit and 5,464 three-digit numbers, space-separated: cl100k_base splits digits
    in runs of at most three and keeps each space a token of its own, so a six-digit number
    is 2 tokens and a three-digit one 1. Under the 32,768-character limit the producers
    checked before tokens were counted, and over the 8,192 tokens OpenAI allows an input.
    """
    rng = random.Random(23)
    numbers = [str(rng.randrange(100_000, 1_000_000)) for _ in range(262)]
    numbers += [str(rng.randrange(100, 1_000)) for _ in range(5_464)]
    rng.shuffle(numbers)
    return " ".join(numbers)
