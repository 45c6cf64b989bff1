"""Threaded stdlib HTTP server that mimics the OpenAI embeddings endpoint, with fault injection."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Self

from stubapi.batch_routes import BatchRoutes
from stubapi.batches import BatchConfig
from stubapi.faults import (
    DEFAULT_REJECT_SUBSTRING,
    FaultRule,
    StubConfig,
    StubState,
    parse_fault_request,
)
from stubapi.ratelimit import LIMIT_HINTS
from stubapi.vectors import (
    DEFAULT_DIMENSIONS,
    MAX_INPUTS,
    RequestError,
    embeddings_response,
    input_tokens,
    parse_embeddings_request,
)
from worker.tokens import CL100K_BASE, token_counter

__all__ = ["StubServer", "serve"]

log = logging.getLogger(__name__)

# status, body, extra headers, the texts embedded (None when the call failed), and
# whether the account limiter refused the call
_Answer = tuple[int, bytes, dict[str, str], list[str] | None, bool]
# Named in a limiter 429 when the request itself does not name a model.
_DEFAULT_MODEL = "text-embedding-3-small"

_FAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def _error_body(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> bytes:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def _fault_response(fault: FaultRule) -> tuple[bytes, dict[str, str]]:
    status = fault.status or 500
    kind = "server_error" if status >= 500 else "invalid_request_error"
    default = (f"Injected fault: HTTP {status}.", kind, None)
    message, kind, code = _FAULT_ERRORS.get(status, default)
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = fault.retry_after_ms
    return _error_body(message, kind, code=code), headers


def _model_named(body: bytes) -> str:
    # Only for a request that failed validation, which may still name its model.
    with contextlib.suppress(ValueError):
        request = json.loads(body)
        if isinstance(request, dict) and isinstance(request.get("model"), str):
            return str(request["model"]) or _DEFAULT_MODEL
    return _DEFAULT_MODEL


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], state: StubState, batch_routes: BatchRoutes
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.batch_routes = batch_routes
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up mid-response are routine in fault tests.
        log.debug("error while handling a request from %s", client_address, exc_info=True)

    def close_connections(self) -> None:
        # Idle keep-alive connections would otherwise keep handler threads blocked in recv.
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle plus delayed ACKs
    # add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        # Drain the body before anything else: leftover bytes would be read as the
        # next request on this keep-alive connection.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(400, _error_body("A valid Content-Length header is required."))
            return
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        path = path.rstrip("/") or "/"
        # The Files and Batches endpoints (stubapi/batch_routes.py) answer their own paths.
        reply = self.server.batch_routes.handle(method, path, query, self.headers, body)
        if reply is not None:
            self._send(reply.status, reply.body, content_type=reply.content_type)
            return
        state = self.server.state
        reads: dict[str, Callable[[], Any]] = {
            "/_stub/health": lambda: {"ok": True},
            "/_stub/stats": state.stats.snapshot,
            "/_stub/faults": lambda: {"faults": state.faults.pending()},
            "/_stub/config": lambda: state.config.public(),
        }
        writes: dict[str, Callable[[bytes], None]] = {
            "/v1/embeddings": self._embeddings,
            "/embeddings": self._embeddings,
            "/_stub/faults": self._post_faults,
            "/_stub/config": self._post_config,
            "/_stub/reset": self._post_reset,
        }
        if method == "GET" and path in reads:
            self._send_json(reads[path]())
        elif method == "POST" and path in writes:
            writes[path](body)
        elif path in reads or path in writes:
            self._send(405, _error_body(f"Method {method} is not allowed on {path}."))
        else:
            self._send(404, _error_body(f"Unknown path {path}.", code="not_found"))

    def _send(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, payload: Any) -> None:
        self._send(200, json.dumps(payload).encode())

    def _embeddings(self, body: bytes) -> None:
        stats = self.server.state.stats
        token = stats.begin()
        try:
            answer = self._answer_embeddings(body, self.server.state)
        except BaseException:
            stats.end(token, None)
            raise
        status, payload, headers, served, rate_limited = answer
        # Stats are final before the response leaves, so a client that reads them right
        # after its call never sees stale counts.
        stats.end(token, served, rate_limited)
        self._send(status, payload, headers)

    def _answer_embeddings(self, body: bytes, state: StubState) -> _Answer:
        config = state.config
        if config.latency_ms > 0:
            # Event.wait rather than time.sleep so stop() need not wait out the delay.
            state.stopping.wait(config.latency_ms / 1000)
        limiter = state.limiter
        if config.api_key is not None:
            supplied = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(supplied, f"Bearer {config.api_key}".encode()):
                body = _error_body("Incorrect API key provided", code="invalid_api_key")
                # Unauthenticated calls do not count against the account's limit.
                headers = limiter.peek() if limiter.enabled else {}
                return 401, body, headers, None, False
        # Parsed before the limiter, which charges the request's tokens, but a parse error
        # is answered only after fault injection, as before.
        try:
            texts, model, encoding, dimensions = parse_embeddings_request(
                body,
                default_dimensions=config.dimensions,
                max_inputs=config.max_inputs,
                reject_substring=config.reject_substring,
            )
            tokens = input_tokens(texts)
            problem = None
        except RequestError as exc:
            texts, tokens, problem = [], 0, exc
        headers = {}
        if limiter.enabled:
            decision = limiter.check(tokens)
            headers = decision.headers
            if not decision.allowed:
                model_named = _model_named(body) if problem else model
                message = decision.error_message(model_named)
                kind = decision.limit_hit or "requests"
                payload = _error_body(message, kind, code="rate_limit_exceeded")
                return 429, payload, headers, None, True
        fault = state.faults.take()
        if fault is not None:
            if fault.hang_s:
                state.stopping.wait(fault.hang_s)
            if fault.status is not None:
                payload, fault_headers = _fault_response(fault)
                return fault.status, payload, {**headers, **fault_headers}, None, False
        if problem is not None:
            return 400, _error_body(problem.message, param=problem.param), headers, None, False
        payload = embeddings_response(texts, model, encoding, dimensions, tokens)
        return 200, payload, headers, texts, False

    def _post_faults(self, body: bytes) -> None:
        state = self.server.state
        try:
            rules, latency_ms = parse_fault_request(json.loads(body or b"{}"))
            if latency_ms is not None:
                state.configure({"latency_ms": latency_ms})
        except ValueError as exc:
            self._send(400, _error_body(f"Invalid fault request: {exc}"))
            return
        for rule in rules:
            state.faults.add(rule)
        self._send_json({"faults": state.faults.pending()})

    def _post_config(self, body: bytes) -> None:
        try:
            spec = json.loads(body or b"{}")
            if not isinstance(spec, dict):
                raise ValueError("body must be a JSON object")
            config = self.server.state.configure(spec)
        except ValueError as exc:
            self._send(400, _error_body(f"Invalid config request: {exc}"))
            return
        self._send_json(config.public())

    def _post_reset(self, _body: bytes) -> None:
        self.server.state.reset()
        self.server.batch_routes.reset()
        self._send_json({"ok": True})


class StubServer:
    """OpenAI-compatible embeddings stub served from a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        dimensions: int = DEFAULT_DIMENSIONS,
        api_key: str | None = None,
        reject_substring: str = DEFAULT_REJECT_SUBSTRING,
        max_inputs: int = MAX_INPUTS,
        rpm: int = 0,
        tpm: int = 0,
        limit_window_s: float = 1.0,
        limit_hints: tuple[str, ...] = LIMIT_HINTS,
        *,
        limit_clock: Callable[[], float] = time.monotonic,
        batch: BatchConfig | None = None,
    ) -> None:
        """``limit_clock`` (monotonic seconds) lets tests place calls in rate-limit windows;
        ``batch`` sets the Batch API's processing delay and limits (stubapi/batches.py)."""
        config = StubConfig(
            host,
            port,
            latency_ms,
            dimensions,
            api_key,
            reject_substring,
            max_inputs,
            rpm,
            tpm,
            limit_window_s,
            limit_hints,
        )
        self._state = StubState(config, limit_clock)
        self._batch_routes = BatchRoutes(lambda: self._state.config, batch)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @classmethod
    def from_config(cls, config: StubConfig) -> StubServer:
        """Build a server from a StubConfig."""
        c = config
        return cls(
            c.host,
            c.port,
            c.latency_ms,
            c.dimensions,
            c.api_key,
            c.reject_substring,
            c.max_inputs,
            c.rpm,
            c.tpm,
            c.limit_window_s,
            c.limit_hints,
        )

    @property
    def config(self) -> StubConfig:
        """The current settings, including runtime changes."""
        return self._state.config

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port=0)."""
        if self._port is None:
            raise RuntimeError("the stub server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """Root URL such as ``http://127.0.0.1:8900``; control endpoints live under /_stub."""
        host = self._state.initial.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL ending in /v1."""
        return f"{self.url}/v1"

    def start(self) -> Self:
        """Bind and serve from a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("the stub server is already running")
        self._state.stopping = threading.Event()
        # Loaded before the first request (about 0.4 s, once per process), so that request
        # takes the configured latency, not the tokenizer's load on top.
        token_counter(CL100K_BASE)
        address = (self._state.initial.host, self._state.initial.port)
        httpd = _HTTPServer(address, self._state, self._batch_routes)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.05,), name="stubapi", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release the port and join the serving thread; safe to call twice."""
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is None:
            return
        self._state.stopping.set()  # wakes handlers sleeping on latency or hang faults
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def add_fault(
        self,
        status: int | None = None,
        count: int | None = None,
        duration_s: float | None = None,
        hang_s: float | None = None,
        retry_after: str | None = None,
        retry_after_ms: str | None = None,
    ) -> FaultRule:
        """Queue a fault rule; it applies to one call unless count or duration_s says otherwise."""
        rule = FaultRule(status, count, duration_s, hang_s, retry_after, retry_after_ms)
        self._state.faults.add(rule)
        return rule

    def pending_faults(self) -> list[dict[str, Any]]:
        """Queued fault rules, head first, with their remaining calls or seconds."""
        return self._state.faults.pending()

    def clear_faults(self) -> None:
        """Drop all queued fault rules."""
        self._state.faults.clear()

    def set_latency_ms(self, latency_ms: float) -> None:
        """Change the fixed delay applied to every embeddings call."""
        self._state.configure({"latency_ms": latency_ms})

    def configure(self, **changes: Any) -> StubConfig:
        """Change runtime settings, e.g. latency_ms, dimensions, rpm, tpm or limit_window_s.

        Any rate-limit setting among ``changes`` also zeroes the limiter's counters.
        """
        return self._state.configure(changes)

    def stats(self) -> dict[str, Any]:
        """Call statistics, the same dict as ``GET /_stub/stats``."""
        return self._state.stats.snapshot()

    def first_call_of(self, text: str) -> int | None:
        """The index in ``stats()["inputs_per_call"]`` of the first call that embedded ``text``."""
        return self._state.stats.first_call_of(text)

    @property
    def batch_routes(self) -> BatchRoutes:
        """The Files and Batches endpoints' state: ``.batches`` (stats, configure, force)."""
        return self._batch_routes

    def reset(self) -> None:
        """Clear faults, stats, rate-limit counters, files and batches, and restore the
        constructor's settings."""
        self._state.reset()
        self._batch_routes.reset()


def serve(
    host: str = "127.0.0.1",
    port: int = 8900,
    latency_ms: float = 50.0,
    dimensions: int = DEFAULT_DIMENSIONS,
    api_key: str | None = None,
    reject_substring: str = DEFAULT_REJECT_SUBSTRING,
    stop: threading.Event | None = None,
    rpm: int = 0,
    tpm: int = 0,
    limit_window_s: float = 1.0,
    batch_delay_s: float | None = None,
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM or ``stop``; announces the URL on stdout."""
    stop_event = threading.Event() if stop is None else stop

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_event.set()

    previous = {}
    # signal.signal only works on the main thread; elsewhere callers stop us via ``stop``.
    if threading.current_thread() is threading.main_thread():
        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
    try:
        server = StubServer(
            host,
            port,
            latency_ms,
            dimensions,
            api_key,
            reject_substring,
            rpm=rpm,
            tpm=tpm,
            limit_window_s=limit_window_s,
            batch=None if batch_delay_s is None else BatchConfig(delay_s=batch_delay_s),
        )
        with server:
            print(f"stub API listening on {server.base_url}", flush=True)
            stop_event.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
