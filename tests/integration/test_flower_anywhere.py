"""Plain ``celery -A worker flower``, started outside the repo: the same login and loopback.

The issue's reproduction was ``cd "$(mktemp -d)" && celery -A worker flower``: Flower read no
``flowerconfig.py`` there, and served every task with no login on every interface. The
project's app now applies ``embeddings_flower.guard`` whenever ``celery`` runs its
``flower`` subcommand, wherever it starts.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from devstack.processes import _Process, free_port, wait_for
from tests.integration.harness import TEST_REDIS_URL, worker_env
from tests.integration.test_flower_entry_point import _listening_addresses

pytestmark = pytest.mark.integration

CELERY = Path(sys.executable).with_name("celery")


def _env() -> dict[str, str]:
    base = worker_env("http://127.0.0.1:9/v1")
    env = {k: v for k, v in base.items() if not k.startswith("FLOWER_")}
    # Nothing of the checkout on the path: the installed package, as an operator has it.
    env.pop("PYTHONPATH", None)
    env.pop("EMBEDDINGS_API_KEY", None)
    return env | {"REDIS_URL": TEST_REDIS_URL}


def test_without_a_login_plain_celery_flower_exits_2_from_any_directory(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(CELERY), "-A", "worker", "flower", f"--port={free_port()}"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "flower: FLOWER_BASIC_AUTH is not set" in done.stderr
    assert "Visit me at" not in done.stdout + done.stderr


def test_with_a_login_plain_celery_flower_asks_for_it_on_loopback_only(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    user, password = "ops", secrets.token_urlsafe(12)
    env = _env() | {"FLOWER_BASIC_AUTH": f"{user}:{password}"}
    flower = _Process(
        [str(CELERY), "-A", "worker", "flower", f"--port={port}"],
        env,
        tmp_path / "flower.log",
        tmp_path,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not flower.alive():
            raise RuntimeError(f"Flower exited early:\n{flower.log()}")
        try:
            return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, 30, "Flower to answer /healthcheck")
        for path in ("/api/workers", "/tasks", "/"):
            assert httpx.get(url + path, timeout=10).status_code == 401, path
        answered = httpx.get(url + "/api/workers", auth=(user, password), timeout=10)
        assert answered.status_code == 200
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        flower.stop()
    assert password not in flower.log_path.read_text()
