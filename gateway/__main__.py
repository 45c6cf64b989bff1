"""``embedding-gateway`` / ``python -m gateway``: serve the gateway with uvicorn.

The command line is ``gateway.cli``: ``--host``, ``--port``, ``--workers`` and
``--log-level`` over their ``GATEWAY_*`` variables, every other setting from the environment
(``gateway.settings``). A bad flag or setting stops the start with a message naming it and
exit status 2.
"""

from __future__ import annotations

import sys

from gateway.cli import UPSTREAM_KEY_VARIABLES, drop_upstream_keys, main

__all__ = ["UPSTREAM_KEY_VARIABLES", "drop_upstream_keys", "main"]


if __name__ == "__main__":
    sys.exit(main())
