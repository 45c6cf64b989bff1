"""Broker URLs shown as they are: ``redis://host`` with no password, never ``redis://:**@host``.

kombu's ``Connection.as_uri`` masks the password field whether or not there is one, so the
worker's banner, Flower's log and its Broker tab showed ``redis://:**@localhost:6379/0`` for a
Redis with no password, and an operator went looking for a password that was never set.
:class:`DisplayConnection` drops the mask when the connection has no password; with one it is
still ``**``, and ``include_password=True`` (what Flower connects with) is kombu's own answer.
``install(app)`` makes it the connection class of ``app``. Written against kombu 5.7.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.connection import Connection

__all__ = ["DisplayConnection", "install"]


class DisplayConnection(Connection):
    """kombu's ``Connection``, whose displayed URL masks only a password that exists."""

    def as_uri(self, include_password: Any = False, mask: Any = "**", *args: Any) -> str:
        uri: str = super().as_uri(include_password, mask, *args)
        if include_password or self.password:
            return uri
        # No password: kombu wrote "scheme://[user]:<mask>@host"; keep the user, if any.
        return uri.replace(f":{mask}@", "@" if self.userid else "", 1)


def install(app: Celery) -> None:
    """Give ``app`` connections that display their URL without a phantom password."""
    app.amqp.Connection = DisplayConnection
