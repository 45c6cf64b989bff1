"""What a task shows of its text outside the worker's code: a length and a hash, not the text.

Celery copies a task's ``argsrepr`` and ``kwargsrepr`` (its rendering of the arguments)
into the task message's headers, the task-sent and task-received events, ``celery inspect
active``, Flower's pages, API and persisted database. Left to Celery they are the text
itself. Producers therefore set them at publish time to ``task_reprs(text, model)``:
``(<text: 812 chars, sha256 1f2e3d4c5b6a…>,)`` and ``{'model': '…'}``. The hash lets an
operator tell repeats apart and match a task to a text they already hold; it is no secret
for a short, guessable text. ``EMBEDDINGS_SHOW_TEXTS=1`` (debugging only) leaves Celery's own
rendering, the text, in place.
"""

from __future__ import annotations

import hashlib

__all__ = ["HASH_HEX_CHARS", "task_reprs", "text_summary"]

# 48 bits of the SHA-256: repeats of one text match, unrelated texts practically never do.
HASH_HEX_CHARS = 12


def text_summary(text: str) -> str:
    """``<text: N chars, sha256 PREFIX…>``: the text's length in characters and a hash prefix."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"<text: {len(text)} chars, sha256 {digest[:HASH_HEX_CHARS]}…>"


def task_reprs(
    text: object, model: str | None, *, show_texts: bool = False
) -> tuple[str | None, str | None]:
    """``(argsrepr, kwargsrepr)`` of an ``embed_text(text, model=model)`` task.

    ``(None, None)`` with ``show_texts``: Celery then renders the arguments, text included.
    """
    if show_texts:
        return None, None
    summary = text_summary(text) if isinstance(text, str) else f"<{type(text).__name__}>"
    kwargs = {"model": model} if model else {}
    # A model name is a short printable str (worker.validation): repr is bounded.
    return f"({summary},)", repr(kwargs)
