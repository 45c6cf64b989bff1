"""``embedding-gateway`` / ``python -m gateway``: serve the gateway with uvicorn.

Settings come from the environment only (``gateway.settings``); a bad or missing one stops
the start with a message naming the variable and exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

import uvicorn

from worker.errors import EmbeddingConfigError

__all__ = ["UPSTREAM_KEY_VARIABLES", "drop_upstream_keys", "main"]

# The workers' credentials for the upstream API. The gateway never needs them.
UPSTREAM_KEY_VARIABLES = ("EMBEDDINGS_API_KEY", "OPENAI_API_KEY")


def drop_upstream_keys(environ: MutableMapping[str, str]) -> None:
    """Remove the upstream API key from ``environ``.

    Compose hands every service the same ``.env``; dropping the key at start means no code
    path, log line or crash dump of the gateway process can carry it.
    """
    for name in UPSTREAM_KEY_VARIABLES:
        environ.pop(name, None)


def main() -> int:
    """Read the settings, build the app and serve it until interrupted."""
    drop_upstream_keys(os.environ)
    # Imported after the keys are gone: the Celery config reads the environment on import.
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    try:
        settings = GatewaySettings.from_env()
    except EmbeddingConfigError as exc:
        print(f"embedding-gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.api_keys:
        logging.getLogger("gateway").warning("GATEWAY_ALLOW_NO_AUTH=1: serving without auth")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
