"""Subprocess wrappers with readiness checks (a ping or a health call, never a fixed sleep)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "REPO_ROOT",
    "GatewayProcess",
    "StubProcess",
    "WorkerProcess",
    "free_port",
    "wait_for",
]


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll ``condition`` every 50 ms until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Process:
    """A child process whose output goes to a log file."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path = REPO_ROOT
    ) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, as an OOM killer or a lost host would."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a warm shutdown for Celery); SIGKILL if still running after ``timeout_s``."""
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._log.close()
        return code


class StubProcess(_Process):
    """``python -m stubapi`` on a free port."""

    def __init__(
        self,
        log_path: Path,
        *,
        latency_ms: float = 50,
        dimensions: int = 1536,
        port: int = 0,
        rpm: int = 0,
        tpm: int = 0,
        limit_window_s: float = 1.0,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        argv = [sys.executable, "-m", "stubapi", "--host", "127.0.0.1", "--port", str(self.port),
                "--latency-ms", str(latency_ms), "--dimensions", str(dimensions)]  # fmt: skip
        # Always passed, so STUB_API_RPM and friends in the caller's environment cannot
        # quietly rate-limit a stack that asked for no limit.
        argv += ["--rpm", str(rpm), "--tpm", str(tpm), "--limit-window-s", str(limit_window_s)]
        super().__init__(argv, os.environ, log_path)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        def healthy() -> bool:
            if not self.alive():
                raise RuntimeError(f"stub API exited early:\n{self.log()}")
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/_stub/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout_s, "the stub API to answer /_stub/health")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{self.port}/_stub/stats").json()
        return stats

    def reset(self) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/_stub/reset").raise_for_status()

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change runtime settings (e.g. rpm, tpm, limit_window_s); returns the new settings."""
        response = httpx.post(f"http://127.0.0.1:{self.port}/_stub/config", json=changes)
        response.raise_for_status()
        config: dict[str, Any] = response.json()
        return config


def worker_argv(hostname: str, loglevel: str, extra_args: Sequence[str] = ()) -> list[str]:
    """The worker command of the Dockerfile and compose, run by this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "worker", "worker", "--without-mingle",
            "-n", hostname, f"--loglevel={loglevel}", *extra_args]  # fmt: skip


class WorkerProcess(_Process):
    """A real ``celery -A worker worker --without-mingle``, as the Dockerfile runs it."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        name: str = "worker",
        loglevel: str = "INFO",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.hostname = f"{name}-{uuid.uuid4().hex[:8]}@localhost"
        super().__init__(worker_argv(self.hostname, loglevel, extra_args), env, log_path)

    def wait_ready(self, app: Any, timeout_s: float = 90.0) -> None:
        """Wait until the worker answers a broadcast ping."""

        def answers() -> bool:
            if not self.alive():
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            return bool(app.control.ping(destination=[self.hostname], timeout=0.25))

        wait_for(answers, timeout_s, f"worker {self.hostname} to answer a ping")


class GatewayProcess(_Process):
    """``python -m gateway`` on a free loopback port; ``env`` carries its ``GATEWAY_*``."""

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int = 0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        full_env = {**env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port)}
        super().__init__([sys.executable, "-m", "gateway"], full_env, log_path)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until ``/healthz`` answers 200 (Redis reachable)."""

        def healthy() -> bool:
            if not self.alive():
                raise RuntimeError(f"gateway exited early:\n{self.log()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout_s, "the gateway to answer /healthz")
