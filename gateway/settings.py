"""The gateway's settings: typed defaults in one place, read from the environment once.

``GatewaySettings.from_env()`` reads only the ``GATEWAY_*`` variables itself; the workers'
model, dimensions and text limit come from ``worker.settings.Settings``, which reads and checks
``EMBEDDINGS_*`` in one place. A bad value fails at start-up naming its variable. No field holds
the upstream API key, and the entry points drop it from the environment first (``gateway.cli``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.errors import EmbeddingConfigError
from worker.settings import (
    DEFAULT_MAX_TEXT_CHARS,
    DEFAULT_MODEL,
    Settings,
    env_float,
    env_int,
    env_str,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_IDEMPOTENCY_TTL_S",
    "DEFAULT_LIMIT_CONCURRENCY",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_RETRY_WINDOW_S",
    "DEFAULT_TIMEOUT_BODY_S",
    "DEFAULT_TIMEOUT_HEADERS_S",
    "DEFAULT_TIMEOUT_KEEP_ALIVE_S",
    "DEFAULT_WORKERS",
    "LOG_LEVELS",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_INPUTS",
    "GatewaySettings",
]

# Loopback unless told otherwise: the compose file sets 0.0.0.0 inside its network and
# publishes the port on the host's 127.0.0.1 only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# One uvicorn process: the gateway mostly waits on Redis, and one event loop holds thousands
# of waiting requests. More processes help only once a CPU is busy parsing and encoding JSON.
DEFAULT_WORKERS = 1
DEFAULT_LOG_LEVEL = "info"
# uvicorn's names, least to most verbose ("trace" is uvicorn's own, below debug).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# OpenAI caps a request at 300,000 tokens, about 1.2 M characters: 8 MiB of JSON holds that
# with room for escapes and multi-byte text.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 60.0
DEFAULT_WORKER_PING_TIMEOUT_S = 1.0
# A request equal to one made this recently (same key, model and texts) waits on its tasks
# (gateway.idempotency): openai-python's two retries of a 60 s timeout fall well inside.
DEFAULT_RETRY_WINDOW_S = 600
# An Idempotency-Key names its request this long, as Stripe keeps its keys (24 h); both are
# capped at the result backend's result_expires.
DEFAULT_IDEMPOTENCY_TTL_S = 86_400
# An Idempotency-Key header longer than this is refused (Stripe's limit).
MAX_IDEMPOTENCY_KEY_CHARS = 255
# OpenAI's own limit of inputs per request.
MAX_INPUTS = 2048
# Open connections (idle keep-alive ones included) or requests in progress past which a new
# request is answered 503 at once: below the common 1,024 open files per process, with room
# for the gateway's Redis connections. 0: no limit.
DEFAULT_LIMIT_CONCURRENCY = 1000
# uvicorn's own default: an idle kept-alive connection is closed after this long.
DEFAULT_TIMEOUT_KEEP_ALIVE_S = 5.0
# A request's line and headers must arrive within this long of the connection opening (or
# of its first byte on a kept-alive connection): a real client sends them in one packet.
DEFAULT_TIMEOUT_HEADERS_S = 10.0
# Its body must arrive within this long of its headers: 8 MiB in 60 s is 140 KB/s.
DEFAULT_TIMEOUT_BODY_S = 60.0
# A request line and headers larger than this get 431 (nginx and Node allow 8-16 KiB).
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _env_bool(name: str, default: bool, environ: Mapping[str, str] | None) -> bool:
    raw = env_str(name, "1" if default else "0", environ).lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise EmbeddingConfigError(f"{name}={raw!r} is invalid: use 1 or 0")


@dataclass(frozen=True)
class GatewaySettings:
    """Everything ``embedding-gateway`` is configured with; units are in the names.

    ``api_keys`` (``GATEWAY_API_KEYS``, comma-separated) are the Bearer tokens clients may
    send; they are hidden from ``repr`` and never logged. Without keys the gateway refuses to
    start unless ``allow_no_auth`` (``GATEWAY_ALLOW_NO_AUTH=1``). ``max_queue_depth`` > 0
    answers 429 while more texts than that wait in the request's lane's queue (0: no bound).
    ``dimensions`` is the workers' ``EMBEDDINGS_DIMENSIONS`` (0: the model's native size).
    ``workers`` (``GATEWAY_WORKERS``, default 1) is how many uvicorn processes share the port;
    ``log_level`` (``GATEWAY_LOG_LEVEL``, one of ``LOG_LEVELS``) applies to uvicorn and the
    gateway's own loggers.

    Slow and idle clients (``gateway.slow_clients``): ``limit_concurrency``
    (``GATEWAY_LIMIT_CONCURRENCY``, 1000; 0: none) open connections or requests in progress
    past which a request gets 503; ``timeout_keep_alive_s`` (5 s) closes an idle kept-alive
    connection; a request's line and headers must arrive within ``timeout_headers_s`` (10 s)
    and its body within ``timeout_body_s`` (60 s) after them, or the connection is closed;
    line and headers over ``max_header_bytes`` (64 KiB) get 431.

    Retries (``gateway.idempotency``): a request equal to one of the last ``retry_window_s``
    (``GATEWAY_RETRY_WINDOW_S``, 600 s; 0: off) waits on that one's tasks; an
    ``Idempotency-Key`` names its request for ``idempotency_ttl_s``
    (``GATEWAY_IDEMPOTENCY_TTL_S``, 86,400 s; 0: the header is ignored).

    ``models`` (``GATEWAY_MODELS``, comma-separated; default ``EMBEDDINGS_MODEL``) are the
    models served and listed by ``/v1/models``; any other is answered 404
    ``model_not_found``.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    log_level: str = DEFAULT_LOG_LEVEL
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    allow_no_auth: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_queue_depth: int = 0
    worker_ping_timeout_s: float = DEFAULT_WORKER_PING_TIMEOUT_S
    access_log: bool = False
    model: str = DEFAULT_MODEL
    dimensions: int = 0
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY
    timeout_keep_alive_s: float = DEFAULT_TIMEOUT_KEEP_ALIVE_S
    timeout_headers_s: float = DEFAULT_TIMEOUT_HEADERS_S
    timeout_body_s: float = DEFAULT_TIMEOUT_BODY_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    retry_window_s: int = DEFAULT_RETRY_WINDOW_S
    idempotency_ttl_s: int = DEFAULT_IDEMPOTENCY_TTL_S
    models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.api_keys and not self.allow_no_auth:
            raise EmbeddingConfigError(
                "GATEWAY_API_KEYS is empty: set one or more comma-separated keys, or "
                "GATEWAY_ALLOW_NO_AUTH=1 to serve without authentication"
            )
        if not 1 <= self.port <= 65535:
            raise EmbeddingConfigError(f"GATEWAY_PORT must be in [1, 65535], got {self.port}")
        if not self.host:
            raise EmbeddingConfigError("GATEWAY_HOST must not be empty")
        if self.workers < 1:
            raise EmbeddingConfigError(f"GATEWAY_WORKERS must be at least 1, got {self.workers}")
        if self.log_level not in LOG_LEVELS:
            raise EmbeddingConfigError(
                f"GATEWAY_LOG_LEVEL={self.log_level!r} is invalid: use one of "
                + ", ".join(LOG_LEVELS)
            )
        positive = (
            "max_body_bytes",
            "request_timeout_s",
            "worker_ping_timeout_s",
            "timeout_keep_alive_s",
            "timeout_headers_s",
            "timeout_body_s",
            "max_header_bytes",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise EmbeddingConfigError(f"GATEWAY_{name.upper()} must be positive")
        if self.limit_concurrency < 0:
            raise EmbeddingConfigError("GATEWAY_LIMIT_CONCURRENCY must not be negative")
        if self.max_queue_depth < 0:
            raise EmbeddingConfigError("GATEWAY_MAX_QUEUE_DEPTH must not be negative")
        if self.retry_window_s < 0:
            raise EmbeddingConfigError("GATEWAY_RETRY_WINDOW_S must not be negative")
        if self.idempotency_ttl_s < 0:
            raise EmbeddingConfigError("GATEWAY_IDEMPOTENCY_TTL_S must not be negative")
        if not self.models:
            # The workers' model, unless told otherwise: frozen, so set through object.
            object.__setattr__(self, "models", (self.model,))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        """Build settings from ``GATEWAY_*`` over the defaults, and the workers' model,
        dimensions and text limit from ``Settings.from_env(environ)``."""
        workers_settings = Settings.from_env(environ)
        keys = env_str("GATEWAY_API_KEYS", "", environ)
        return cls(
            host=env_str("GATEWAY_HOST", DEFAULT_HOST, environ),
            port=env_int("GATEWAY_PORT", DEFAULT_PORT, environ),
            workers=env_int("GATEWAY_WORKERS", DEFAULT_WORKERS, environ),
            log_level=env_str("GATEWAY_LOG_LEVEL", DEFAULT_LOG_LEVEL, environ).lower(),
            api_keys=tuple(key.strip() for key in keys.split(",") if key.strip()),
            allow_no_auth=_env_bool("GATEWAY_ALLOW_NO_AUTH", False, environ),
            max_body_bytes=env_int("GATEWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, environ),
            request_timeout_s=env_float(
                "GATEWAY_REQUEST_TIMEOUT_S", DEFAULT_REQUEST_TIMEOUT_S, environ
            ),
            max_queue_depth=env_int("GATEWAY_MAX_QUEUE_DEPTH", 0, environ),
            worker_ping_timeout_s=env_float(
                "GATEWAY_WORKER_PING_TIMEOUT_S", DEFAULT_WORKER_PING_TIMEOUT_S, environ
            ),
            access_log=_env_bool("GATEWAY_ACCESS_LOG", False, environ),
            model=workers_settings.model,
            dimensions=workers_settings.dimensions,
            max_text_chars=workers_settings.max_text_chars,
            limit_concurrency=env_int(
                "GATEWAY_LIMIT_CONCURRENCY", DEFAULT_LIMIT_CONCURRENCY, environ
            ),
            timeout_keep_alive_s=env_float(
                "GATEWAY_TIMEOUT_KEEP_ALIVE_S", DEFAULT_TIMEOUT_KEEP_ALIVE_S, environ
            ),
            timeout_headers_s=env_float(
                "GATEWAY_TIMEOUT_HEADERS_S", DEFAULT_TIMEOUT_HEADERS_S, environ
            ),
            timeout_body_s=env_float("GATEWAY_TIMEOUT_BODY_S", DEFAULT_TIMEOUT_BODY_S, environ),
            max_header_bytes=env_int("GATEWAY_MAX_HEADER_BYTES", DEFAULT_MAX_HEADER_BYTES, environ),
            retry_window_s=env_int("GATEWAY_RETRY_WINDOW_S", DEFAULT_RETRY_WINDOW_S, environ),
            idempotency_ttl_s=env_int(
                "GATEWAY_IDEMPOTENCY_TTL_S", DEFAULT_IDEMPOTENCY_TTL_S, environ
            ),
            models=tuple(
                name.strip()
                for name in env_str("GATEWAY_MODELS", "", environ).split(",")
                if name.strip()
            ),
        )
