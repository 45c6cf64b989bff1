"""``embedding-gateway``'s command line: four flags over the ``GATEWAY_*`` variables.

A flag stands for its variable: ``--port 18181`` is ``GATEWAY_PORT=18181`` for this run, so
a flag wins over the environment, which wins over the defaults of ``gateway.settings``. The
flags are written into the process environment before the settings are read, because with
``--workers`` above 1 uvicorn starts fresh processes that inherit only the environment and
build the app there, from the import string ``APP_FACTORY``. One process is served the same
way, so both take one path.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn

from gateway import slow_clients
from gateway.settings import (
    DEFAULT_HOST,
    DEFAULT_LOG_LEVEL,
    DEFAULT_PORT,
    DEFAULT_WORKERS,
    LOG_LEVELS,
    GatewaySettings,
)
from worker.errors import EmbeddingConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "APP_FACTORY",
    "FLAGS",
    "PROG",
    "UPSTREAM_KEY_VARIABLES",
    "Flag",
    "app_from_env",
    "configure_logging",
    "drop_upstream_keys",
    "main",
    "parse_args",
    "uvicorn_options",
]

PROG = "embedding-gateway"
# What uvicorn imports in each of its processes (a factory: it takes no arguments).
APP_FACTORY = "gateway.cli:app_from_env"
# The workers' credentials for the upstream API. The gateway never needs them.
UPSTREAM_KEY_VARIABLES = ("EMBEDDINGS_API_KEY", "OPENAI_API_KEY")
# uvicorn's "trace" level is below DEBUG; Python's logging has no name for it.
_TRACE = 5


def _port(raw: str) -> str:
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in [1, 65535]; got {raw!r}")
    return str(port)


def _workers(raw: str) -> str:
    try:
        workers = int(raw)
    except ValueError:
        workers = 0
    if workers < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, at least 1; got {raw!r}")
    return str(workers)


def _host(raw: str) -> str:
    if not raw.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return raw.strip()


def _log_level(raw: str) -> str:
    if raw.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}; got {raw!r}")
    return raw.lower()


@dataclass(frozen=True)
class Flag:
    """One flag, the variable it stands for, and how its value is checked."""

    option: str
    variable: str
    default: object
    metavar: str
    help: str
    check: Callable[[str], str]

    @property
    def dest(self) -> str:
        return self.option.removeprefix("--").replace("-", "_")


FLAGS = (
    Flag("--host", "GATEWAY_HOST", DEFAULT_HOST, "ADDRESS", "address to listen on", _host),
    Flag("--port", "GATEWAY_PORT", DEFAULT_PORT, "PORT", "port to listen on", _port),
    Flag(
        "--workers",
        "GATEWAY_WORKERS",
        DEFAULT_WORKERS,
        "N",
        "uvicorn processes sharing the port",
        _workers,
    ),
    Flag(
        "--log-level",
        "GATEWAY_LOG_LEVEL",
        DEFAULT_LOG_LEVEL,
        "LEVEL",
        f"one of {', '.join(LOG_LEVELS)}",
        _log_level,
    ),
)

EPILOG = """\
Each flag stands for its variable and wins over it. Every other setting comes from the
environment only: GATEWAY_API_KEYS (required, or GATEWAY_ALLOW_NO_AUTH=1),
GATEWAY_MAX_BODY_BYTES, GATEWAY_REQUEST_TIMEOUT_S, GATEWAY_MAX_QUEUE_DEPTH,
GATEWAY_WORKER_PING_TIMEOUT_S, GATEWAY_ACCESS_LOG, GATEWAY_LIMIT_CONCURRENCY,
GATEWAY_TIMEOUT_KEEP_ALIVE_S, GATEWAY_TIMEOUT_HEADERS_S, GATEWAY_TIMEOUT_BODY_S,
GATEWAY_MAX_HEADER_BYTES, GATEWAY_MODELS, GATEWAY_RETRY_WINDOW_S,
GATEWAY_IDEMPOTENCY_TTL_S, REDIS_URL, EMBEDDINGS_MODEL, EMBEDDINGS_DIMENSIONS,
EMBEDDINGS_MAX_TEXT_CHARS (docs/gateway.md).

exit status:
  0    stopped (Ctrl-C or SIGTERM) after serving
  2    a bad flag or setting (the message names it)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the OpenAI-compatible /v1/embeddings in front of the queue.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for flag in FLAGS:
        parser.add_argument(
            flag.option,
            type=flag.check,
            metavar=flag.metavar,
            help=f"{flag.help} (env {flag.variable}; default {flag.default})",
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> dict[str, str]:
    """The variables the flags of ``argv`` stand for, with their checked values.

    A bad or unknown flag, and ``--help``, end the process through argparse (status 2 with a
    message naming the flag; 0 after the usage) before anything else happens.
    """
    args = _parser().parse_args(argv)
    given = {flag.variable: getattr(args, flag.dest) for flag in FLAGS}
    return {variable: value for variable, value in given.items() if value is not None}


def drop_upstream_keys(environ: MutableMapping[str, str]) -> None:
    """Remove the upstream API key from ``environ``.

    Compose hands every service the same ``.env``; dropping the key at start means no code
    path, log line or crash dump of the gateway process, nor of the uvicorn processes it
    starts (they inherit this environment), can carry it.
    """
    for name in UPSTREAM_KEY_VARIABLES:
        environ.pop(name, None)


def configure_logging(level: str) -> None:
    """Send the gateway's own log lines to stderr at ``level`` (a name of ``LOG_LEVELS``)."""
    number = _TRACE if level == "trace" else logging.getLevelNamesMapping()[level.upper()]
    logging.basicConfig(level=number, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def app_from_env() -> FastAPI:
    """The gateway built from this process's environment: uvicorn calls it in each process."""
    drop_upstream_keys(os.environ)
    # Imported after the keys are gone: the Celery config reads the environment on import.
    from gateway.app import create_app

    settings = GatewaySettings.from_env()
    configure_logging(settings.log_level)
    slow_clients.configure(settings)
    return create_app(settings)


def uvicorn_options(settings: GatewaySettings) -> Mapping[str, Any]:
    """``uvicorn.run``'s arguments: the factory's import string, never an app object.

    uvicorn refuses an app object with ``workers`` above 1 (it cannot hand one to a new
    process), so every process, the first included, builds its own from the environment.
    """
    return {
        "app": APP_FACTORY,
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "access_log": settings.access_log,
        "log_level": settings.log_level,
        # uvicorn's protocol with deadlines for reading a request; it reads them in each
        # process from the same settings (app_from_env), as an import string for the same
        # reason as the app.
        "http": slow_clients.PROTOCOL,
        "limit_concurrency": settings.limit_concurrency or None,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
    }


def main(
    argv: Sequence[str] | None = None,
    environ: MutableMapping[str, str] | None = None,
    serve: Callable[..., Any] = uvicorn.run,
) -> int:
    """Parse the flags, check the settings, and serve until interrupted.

    ``environ`` (default ``os.environ``) receives the flags' variables; ``serve`` (default
    ``uvicorn.run``) is replaced in tests.
    """
    environ = os.environ if environ is None else environ
    overrides = parse_args(argv)
    drop_upstream_keys(environ)
    environ.update(overrides)
    try:
        settings = GatewaySettings.from_env(environ)
    except EmbeddingConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if not settings.api_keys:
        logging.getLogger("gateway").warning("GATEWAY_ALLOW_NO_AUTH=1: serving without auth")
    serve(**uvicorn_options(settings))
    return 0
