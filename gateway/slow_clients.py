"""Deadlines for reading a request: uvicorn's httptools protocol, plus what it lacks.

uvicorn (0.30 to 0.55) times a connection out only while it idles between requests
(``timeout_keep_alive``), and that timer starts only once a response is sent. A client that
connects and sends half a request line, headers a byte at a time, or a body that never
ends holds its socket and its buffers for good: 5,000 such connections held for 60 s were
never closed, and the gateway grew from 67 to 91 MB. uvicorn has no header timeout, and
``h11_max_incomplete_event_size`` bounds only the h11 parser, not httptools, which uvicorn
picks when it is installed (it is a dependency here).

:class:`GuardedHttpToolsProtocol` is that protocol with three limits
(``gateway.settings``, read in each uvicorn process by :func:`configure`):

- a request's line and headers must arrive within ``timeout_headers_s`` of the connection
  opening, or of the request's first byte on a kept-alive connection;
- its body must arrive within ``timeout_body_s`` of its headers;
- its line and headers may take at most ``max_header_bytes`` (431 past that).

A connection past a deadline is closed without an answer: nothing was asked yet. The
protocol is the one visible layer over uvicorn's internals; :func:`check` runs at import and
names any hook a future uvicorn no longer has.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.settings import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_TIMEOUT_BODY_S,
    DEFAULT_TIMEOUT_HEADERS_S,
    GatewaySettings,
)

__all__ = ["PROTOCOL", "GuardedHttpToolsProtocol", "check", "configure"]

log = logging.getLogger(__name__)

# What uvicorn imports in each of its processes as the ``http`` protocol.
PROTOCOL = "gateway.slow_clients:GuardedHttpToolsProtocol"

# The methods and attributes of uvicorn's protocol this module overrides or uses.
_HOOKS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_message_complete",
    "handle_websocket_upgrade",
)

_TOO_LARGE = b"request line and headers too large"
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TOO_LARGE)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _TOO_LARGE
)


def check() -> None:
    """Raise ImportError naming uvicorn's version if a hook this module needs is gone."""
    missing = [name for name in _HOOKS if not callable(getattr(HttpToolsProtocol, name, None))]
    if missing:
        raise ImportError(
            f"uvicorn {uvicorn.__version__}'s HttpToolsProtocol lacks {', '.join(missing)}: "
            "gateway.slow_clients was written against uvicorn 0.30-0.55"
        )


check()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that closes connections slow to send a request.

    The limits are class attributes, set once per process by :func:`configure`.
    """

    timeout_headers_s: float = DEFAULT_TIMEOUT_HEADERS_S
    timeout_body_s: float = DEFAULT_TIMEOUT_BODY_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        # Bytes received while a request's line and headers are incomplete.
        self._header_bytes = 0
        self._in_headers = True

    # -- the deadline -------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("closing %s: no complete %s within %g s", self.client, what, seconds)
        self.transport.close()

    # -- uvicorn's hooks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Counted from the connection, not from the first byte: a client that connects and
        # sends nothing is the cheapest way to hold a socket.
        self._arm(self.timeout_headers_s, "request line and headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_headers or self.transport.is_closing():
            return
        # Counted after parsing, so a chunk that completed the headers (and brought body
        # bytes with it) is never counted as headers.
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            self._disarm()
            self.transport.write(_431)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm(self.timeout_headers_s, "request line and headers")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._arm(self.timeout_body_s, "request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is another protocol's from here on
        super().handle_websocket_upgrade()


def configure(settings: GatewaySettings) -> None:
    """Give :class:`GuardedHttpToolsProtocol` the limits of ``settings``, for this process."""
    GuardedHttpToolsProtocol.timeout_headers_s = settings.timeout_headers_s
    GuardedHttpToolsProtocol.timeout_body_s = settings.timeout_body_s
    GuardedHttpToolsProtocol.max_header_bytes = settings.max_header_bytes
