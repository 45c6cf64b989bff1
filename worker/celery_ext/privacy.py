"""A worker's answers to ``celery inspect`` show a text as its ``argsrepr``, never the text.

Celery's ``inspect active`` (unless asked ``--safe``), ``reserved`` and ``scheduled`` answer
with each request's raw arguments (``Request.info(safe=False)``). Flower asks exactly these
for its worker pages, and anyone with broker access can. The producers set ``argsrepr`` to
the text's length and hash (``worker.redaction``); ``RedactedInfoRequest.info`` always
answers with it. With ``EMBEDDINGS_SHOW_TEXTS=1`` the producers leave Celery's own
``argsrepr``, the text, so the texts show there too. Written against celery 5.7.0;
``worker.celery_ext.compat`` checks ``Request.info``.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

__all__ = ["RedactedInfoRequest"]


class RedactedInfoRequest(Request):  # type: ignore[misc]
    """A request whose ``info`` shows the message's ``argsrepr``/``kwargsrepr``, not its args."""

    def info(self, safe: bool = False) -> dict[str, Any]:
        """Celery's ``Request.info`` as if ``safe`` were always asked for."""
        info: dict[str, Any] = super().info(safe=True)
        return info
