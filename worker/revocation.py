"""Revoked texts, remembered in Redis so every worker of the fleet knows, even one not yet started.

Celery's ``revoke`` is a broadcast: only workers running at that moment hear it, each keeps
it in memory (``--statedb`` keeps it in a file of one host), and none of them can take back
a text already waiting in its micro-batcher. ``producers.revoke(ids)`` therefore also writes
the ids to a sorted set in the result store's Redis (``REVOKED_KEY``; score: when the
revoke expires, in Unix seconds), and stores each text's state as REVOKED; the
micro-batcher asks that set about every text of a call, in one round trip, before the call
leaves. A revoke is remembered as long as a result is (``EMBEDDINGS_RESULT_EXPIRES_S``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

__all__ = ["REVOKED_KEY", "RevokeList", "TextRevoked"]

# A sorted set of task ids; each member's score is the Unix time its revoke expires.
REVOKED_KEY = "embeddings-revoked"


class TextRevoked(RuntimeError):
    """Resolves a waiting text's future: it was revoked, and no call will carry it."""


@runtime_checkable
class RevokeList(Protocol):
    """A result backend that remembers revoked task ids (``worker.celery_ext.result_backend``)."""

    def remember_revoked(self, task_ids: Sequence[str], reason: str) -> None:
        """Add ``task_ids`` to the revoke list and store each one's state as REVOKED."""
        ...

    def revoked_among(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` on the revoke list, in one round trip."""
        ...
