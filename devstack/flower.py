"""A real ``embeddings-flower`` subprocess (the project's Flower), always with basic auth."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from devstack.processes import REPO_ROOT, _Process, free_port, wait_for

__all__ = ["FLOWER_COMMAND", "FlowerProcess", "flower_env"]


# The console script beside this interpreter: the command an operator runs.
FLOWER_COMMAND = Path(sys.executable).with_name("embeddings-flower")


class FlowerProcess(_Process):
    """``embeddings-flower`` on a free port, with ``basic_auth`` (``user:password``) required.

    It listens on 127.0.0.1, its own default (``FLOWER_ADDRESS`` is dropped from ``env``), and
    starts in ``cwd`` (default: the repo root). Its state is kept in memory only unless
    ``extra_args`` say otherwise (``--persistent=True --db=…``, as compose runs it on a volume).
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        basic_auth: str,
        port: int = 0,
        extra_args: Sequence[str] = (),
        cwd: Path = REPO_ROOT,
    ) -> None:
        user, sep, password = basic_auth.partition(":")
        if not (user and sep and password):
            raise ValueError("Flower needs basic auth as 'user:password'")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = (user, password)
        argv = [str(FLOWER_COMMAND), f"--port={self.port}", *extra_args]
        full_env = {k: v for k, v in env.items() if k != "FLOWER_ADDRESS"}
        super().__init__(argv, {**full_env, "FLOWER_BASIC_AUTH": basic_auth}, log_path, cwd)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until Flower answers ``/healthcheck`` (which needs no auth)."""

        def healthy() -> bool:
            if not self.alive():
                raise RuntimeError(f"Flower exited early:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/healthcheck", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout_s, "Flower to answer /healthcheck")

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/<path>`` with the credentials and return its JSON."""
        response = httpx.get(f"{self.url}/api/{path}", params=params, auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()


def flower_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without the API key: Flower needs none."""
    env = dict(os.environ if base is None else base)
    for name in ("EMBEDDINGS_API_KEY", "OPENAI_API_KEY"):
        env.pop(name, None)
    return env
