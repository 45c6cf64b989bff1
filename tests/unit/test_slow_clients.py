"""``GuardedHttpToolsProtocol``: deadlines for reading a request, on a fake loop and transport.

The integration test (tests/integration/test_gateway_slow_clients.py) runs the real server.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway import slow_clients
from gateway.settings import GatewaySettings
from gateway.slow_clients import GuardedHttpToolsProtocol

HALF_HEADERS = b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nContent-Type: appl"
GET = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n\r\n"


class Timer:
    def __init__(self, delay_s: float, callback: Callable[..., None], args: tuple[Any, ...]):
        self.delay_s, self.callback, self.args = delay_s, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        assert not self.cancelled
        self.callback(*self.args)


class FakeLoop:
    """Records timers instead of running them, and never runs the app."""

    def __init__(self) -> None:
        self.timers: list[Timer] = []

    def call_later(self, delay_s: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(delay_s, callback, args)
        self.timers.append(timer)
        return timer

    def create_task(self, coroutine: Coroutine[Any, Any, Any], **_: Any) -> Any:
        coroutine.close()
        return FakeTask()

    def pending(self) -> list[Timer]:
        return [t for t in self.timers if not t.cancelled]


class FakeTask:
    def add_done_callback(self, callback: Callable[..., None]) -> None:
        pass


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never run: FakeLoop drops it
    raise AssertionError("the app is not run in these tests")


@pytest.fixture
def limits() -> Iterator[None]:
    before = (
        GuardedHttpToolsProtocol.timeout_headers_s,
        GuardedHttpToolsProtocol.timeout_body_s,
        GuardedHttpToolsProtocol.max_header_bytes,
    )
    slow_clients.configure(
        GatewaySettings(
            allow_no_auth=True, timeout_headers_s=10.0, timeout_body_s=60.0, max_header_bytes=1024
        )
    )
    yield
    (
        GuardedHttpToolsProtocol.timeout_headers_s,
        GuardedHttpToolsProtocol.timeout_body_s,
        GuardedHttpToolsProtocol.max_header_bytes,
    ) = before


def _connect(limits: None) -> tuple[GuardedHttpToolsProtocol, FakeLoop, FakeTransport]:
    config = Config(app=_app, lifespan="off", log_config=None)
    config.load()
    loop = FakeLoop()
    protocol = GuardedHttpToolsProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=loop
    )
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, loop, transport


def test_a_connection_that_sends_nothing_is_closed_at_the_headers_deadline(limits) -> None:
    _, loop, transport = _connect(limits)
    [deadline] = loop.pending()
    assert deadline.delay_s == 10.0
    deadline.fire()
    assert transport.closed
    assert transport.written == b""  # nothing was asked, so nothing is answered


def test_half_sent_headers_do_not_push_the_deadline_back(limits) -> None:
    protocol, loop, transport = _connect(limits)
    protocol.data_received(HALF_HEADERS)
    protocol.data_received(b"ication/json\r\n")
    [deadline] = loop.pending()
    assert deadline.delay_s == 10.0 and deadline is loop.timers[0]  # still the first one
    deadline.fire()
    assert transport.closed


def test_a_body_that_stops_coming_is_closed_at_the_body_deadline(limits) -> None:
    protocol, loop, transport = _connect(limits)
    protocol.data_received(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    [deadline] = loop.pending()
    assert deadline.delay_s == 60.0
    deadline.fire()
    assert transport.closed


def test_a_whole_request_leaves_no_deadline_behind(limits) -> None:
    protocol, loop, transport = _connect(limits)
    protocol.data_received(GET)
    assert loop.pending() == []
    assert not transport.closed


def test_the_next_request_on_a_kept_alive_connection_gets_its_own_deadline(limits) -> None:
    protocol, loop, transport = _connect(limits)
    protocol.data_received(GET)
    protocol.cycle.response_complete = True  # as if the app had answered
    protocol.data_received(b"GET /v1/models HTTP/1.1\r\nHo")
    [deadline] = loop.pending()
    assert deadline.delay_s == 10.0 and deadline is not loop.timers[0]
    deadline.fire()
    assert transport.closed


def test_headers_past_the_byte_limit_get_431_and_the_connection_closes(limits) -> None:
    protocol, loop, transport = _connect(limits)
    protocol.data_received(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Pad: ")
    protocol.data_received(b"a" * 1024)
    assert transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert transport.closed
    assert loop.pending() == []


def test_a_large_body_arriving_with_its_headers_is_not_counted_as_headers(limits) -> None:
    protocol, _, transport = _connect(limits)
    body = b"x" * 4096
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\nContent-Length: 4096\r\n\r\n"
    protocol.data_received(head + body)
    assert transport.written == b""
    assert not transport.closed


def test_configure_gives_every_connection_the_settings_limits() -> None:
    before = (
        GuardedHttpToolsProtocol.timeout_headers_s,
        GuardedHttpToolsProtocol.timeout_body_s,
        GuardedHttpToolsProtocol.max_header_bytes,
    )
    try:
        slow_clients.configure(
            GatewaySettings(
                allow_no_auth=True, timeout_headers_s=2.5, timeout_body_s=7.0, max_header_bytes=99
            )
        )
        assert GuardedHttpToolsProtocol.timeout_headers_s == 2.5
        assert GuardedHttpToolsProtocol.timeout_body_s == 7.0
        assert GuardedHttpToolsProtocol.max_header_bytes == 99
    finally:
        (
            GuardedHttpToolsProtocol.timeout_headers_s,
            GuardedHttpToolsProtocol.timeout_body_s,
            GuardedHttpToolsProtocol.max_header_bytes,
        ) = before


def test_the_protocol_import_string_names_the_guarded_protocol() -> None:
    module_name, _, attribute = slow_clients.PROTOCOL.partition(":")
    module = __import__(module_name, fromlist=[attribute])
    assert getattr(module, attribute) is GuardedHttpToolsProtocol


def test_a_uvicorn_without_a_needed_hook_fails_at_import_naming_it(monkeypatch) -> None:
    monkeypatch.delattr("uvicorn.protocols.http.httptools_impl.HttpToolsProtocol.on_message_begin")
    with pytest.raises(ImportError, match="on_message_begin"):
        slow_clients.check()
