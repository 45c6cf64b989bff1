"""What a task shows of its text outside the worker's code: a length and a hash, not the text.

Celery copies a task's ``argsrepr`` and ``kwargsrepr`` (its rendering of the arguments)
into the task message's headers, the task-sent and task-received events, ``celery inspect
active``, Flower's pages, API and persisted database. Left to Celery they are the text
itself. Producers therefore set them at publish time to ``task_reprs(text, model, lane=…)``:
``(<text: 812 chars, sha256 1f2e3d4c5b6a…>,)`` and ``{'model': '…', 'lane': 'bulk'}``. The
hash lets an operator tell repeats apart and match a task to a text they already hold; it is
no secret for a short, guessable text. ``EMBEDDINGS_SHOW_TEXTS=1`` (debugging only) leaves
Celery's own rendering of the arguments, the text, in place; the lane is still shown.

The lane is not an argument of the task (a worker reads it from the queue the text came
from); it is shown among the keyword arguments because that rendering travels in the message
itself, so every task-received event, ``inspect`` answer and Flower page has it, even when
the producer's task-sent event was missed, and Flower's search finds ``kwargs:lane=bulk``.
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
    text: object, model: str | None, *, show_texts: bool = False, lane: str | None = None
) -> tuple[str | None, str | None]:
    """``(argsrepr, kwargsrepr)`` of an ``embed_text(text, model=model)`` task in ``lane``.

    ``lane`` (``worker.names.LANES``) is shown as if it were a keyword argument; None (the
    default, for callers written before lanes) shows none. With ``show_texts`` the
    ``argsrepr`` is None, so Celery renders the arguments, text included, and so is the
    ``kwargsrepr`` unless there is a lane to show.
    """
    kwargs: dict[str, str] = {"model": model} if model else {}
    if lane is not None:
        kwargs["lane"] = lane
    if show_texts:
        # Celery's own rendering of the keyword arguments would be repr(kwargs) without
        # the lane: only a lane needs this one.
        return None, (repr(kwargs) if lane is not None else None)
    summary = text_summary(text) if isinstance(text, str) else f"<{type(text).__name__}>"
    # A model name is a short printable str (worker.validation), a lane a short name: repr
    # is bounded.
    return f"({summary},)", repr(kwargs)
