"""``embedding-gateway`` with flags, as a real subprocess (the console script) on a real Redis."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import redis

from devstack import free_port, wait_for
from tests.integration.harness import worker_env

pytestmark = pytest.mark.integration

GATEWAY_KEY = "gw-cli-integration-key-71d3"
SCRIPT = Path(sys.executable).with_name("embedding-gateway")


def _env() -> dict[str, str]:
    env = worker_env("http://127.0.0.1:9/v1", {"GATEWAY_API_KEYS": GATEWAY_KEY})
    return {k: v for k, v in env.items() if not k.startswith("GATEWAY_")} | {
        "GATEWAY_API_KEYS": GATEWAY_KEY
    }


class Gateway:
    """The console script in its own session, so that its uvicorn processes stop with it."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.log_path = cwd / "gateway.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(SCRIPT), *argv],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def healthz(self, port: int, timeout_s: float = 60) -> httpx.Response:
        def answered() -> httpx.Response | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedding-gateway exited early:\n{self.log()}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except httpx.TransportError:
                return None

        response = wait_for(answered, timeout_s, f"/healthz on port {port}")
        assert isinstance(response, httpx.Response)
        return response

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def start_gateway(
    redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Callable[[Sequence[str], dict[str, str]], Gateway]]:
    started: list[Gateway] = []

    def start(argv: Sequence[str], env: dict[str, str]) -> Gateway:
        gateway = Gateway(argv, env, tmp_path)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def test_the_port_flag_wins_over_gateway_port_and_healthz_answers_there(start_gateway):
    port, env_port = free_port(), free_port()
    gateway = start_gateway(["--port", str(port)], {**_env(), "GATEWAY_PORT": str(env_port)})
    response = gateway.healthz(port)
    assert response.status_code == 200
    assert response.json()["redis"] is True
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{env_port}/healthz", timeout=2)
    assert f"Uvicorn running on http://127.0.0.1:{port}" in gateway.log()


@pytest.mark.slow
def test_two_worker_processes_each_build_the_app_and_serve_the_port(start_gateway):
    port = free_port()
    gateway = start_gateway(["--port", str(port), "--workers", "2"], _env())
    assert gateway.healthz(port).status_code == 200

    def both_started() -> set[str] | None:
        pids = set(re.findall(r"Started server process \[(\d+)\]", gateway.log()))
        return pids if len(pids) == 2 else None

    pids = wait_for(both_started, 60, "two uvicorn server processes")
    assert isinstance(pids, set) and str(gateway.proc.pid) not in pids
    # Each process logs its application start-up: the factory ran in both. The second may
    # still be starting when the first already serves.
    wait_for(
        lambda: gateway.log().count("Application startup complete.") == 2,
        60,
        "both processes to complete their application start-up",
    )
    assert GATEWAY_KEY not in gateway.log()


def test_help_prints_the_usage_and_exits_0_without_serving(redis_client, tmp_path: Path):
    port = free_port()
    # No GATEWAY_API_KEYS: a start would fail with status 2, so 0 means nothing was started.
    env = {k: v for k, v in _env().items() if k != "GATEWAY_API_KEYS"}
    done = subprocess.run(
        [str(SCRIPT), "--help", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: embedding-gateway")
    assert "GATEWAY_PORT" in done.stdout
    assert "Uvicorn running" not in done.stdout + done.stderr


def test_an_unknown_option_exits_2_with_argparse_message(redis_client, tmp_path: Path):
    done = subprocess.run(
        [str(SCRIPT), "--prot", "18181"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "embedding-gateway: error: unrecognized arguments: --prot 18181" in done.stderr
