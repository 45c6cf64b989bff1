"""Checks a worker makes before it takes its first text, with a one-line error when one fails,
and the token encoding it loads before then.

``connect_signals()`` (called by ``worker.tasks``, the module only workers load) hooks
Celery's ``celeryd_init``, sent before the worker connects to the broker. Producers, the
gateway and Flower never hold the API key, so only the worker checks it.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from celery.signals import celeryd_init

from worker.errors import EmbeddingConfigError
from worker.settings import Settings
from worker.tokens import token_counter

__all__ = ["check_worker_settings", "connect_signals", "is_local_base_url", "require_api_key"]


def is_local_base_url(base_url: str) -> bool:
    """True when ``base_url``'s host is this machine or a one-label name on a private network.

    Loopback (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``) or a host name without
    a dot, such as a compose service (``stubapi``, ``tei``): where keyless servers (the stub,
    TEI, Ollama, vLLM) run. Every public API has a dotted name.
    """
    host = (urlsplit(base_url).hostname or "").lower()
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return "." not in host


def require_api_key(settings: Settings) -> None:
    """Raise ``EmbeddingConfigError`` naming ``EMBEDDINGS_API_KEY`` when a worker would call a
    non-local API (``is_local_base_url``) with no key: every call would be refused (401)."""
    if settings.api_key or is_local_base_url(settings.base_url):
        return
    host = urlsplit(settings.base_url).hostname
    raise EmbeddingConfigError(
        f"EMBEDDINGS_API_KEY is empty (and so is OPENAI_API_KEY) but EMBEDDINGS_BASE_URL names "
        f"{host}: set the key (in .env for docker compose); only a local server (localhost, "
        "127.0.0.1, ::1 or a one-label host such as a compose service) may go without one"
    )


def check_worker_settings(**_: Any) -> None:
    """Exit with one line (no traceback) naming the variable when the worker cannot run.

    It also loads the model's token encoding (worker/tokens), checking the shipped file: the
    0.3-1 s of CPU, which holds the GIL, would otherwise delay the first texts' calls.
    ``SystemExit``, not an exception: Celery's signal dispatch logs and swallows exceptions.
    """
    try:
        settings = Settings.from_env()
        require_api_key(settings)
        token_counter(settings.encoding_for(settings.model))
    except EmbeddingConfigError as exc:
        raise SystemExit(f"worker not started: {exc}") from None


def connect_signals() -> None:
    """Run ``check_worker_settings`` when a worker starts (idempotent)."""
    celeryd_init.connect(check_worker_settings, weak=False, dispatch_uid=__name__)
