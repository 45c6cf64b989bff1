"""Helpers for the fault suite: a private redis-server, an app for it, and result checks.

The shared Redis on 6379 is never stopped; a test that restarts or locks down Redis starts
its own server on a free port here.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from devstack import free_port, wait_for
from stubapi.vectors import vector_for
from worker.celery_ext.config import apply_config, with_redis_url
from worker.names import LANE_QUEUES
from worker.settings import Settings

__all__ = [
    "DIMS",
    "IGNORE_RESULT_DEL_IN_OUTAGES",
    "RedisServer",
    "all_redis_bytes",
    "app_for",
    "expected",
    "outcomes",
    "wait_all_ready",
]

DIMS = 16


# Celery's AsyncResult.__del__ unsubscribes over the network; collected while a test has
# Redis down or full, it raises and Python drops the error ("Exception ignored in"). The
# tests that take Redis away ignore that one warning:
# docs/reliability.md, "Known upstream issues".
IGNORE_RESULT_DEL_IN_OUTAGES = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function AsyncResult.__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)


def expected(text: str) -> Any:
    """The stub's vector for ``text``, compared at float32 precision (what the wire carries)."""
    return pytest.approx(vector_for(text, DIMS), rel=1e-6, abs=1e-7)


def app_for(url: str) -> Celery:
    """A Celery app configured like the worker's, but on ``url`` (not the session's app)."""
    app = Celery("faults", set_as_current=False)
    apply_config(app, with_redis_url(Settings.from_env(), url))
    return app


def wait_all_ready(results: Sequence[AsyncResult], timeout_s: float, what: str) -> float:
    """Wait until every result is ready (SUCCESS or FAILURE); return the seconds it took."""
    started = time.monotonic()
    pending = list(results)

    def done() -> bool:
        nonlocal pending
        pending = [r for r in pending if not r.ready()]
        return not pending

    try:
        wait_for(done, timeout_s, what)
    except TimeoutError as exc:
        states: dict[str, int] = {}
        for result in pending:
            states[result.state] = states.get(result.state, 0) + 1
        raise TimeoutError(
            f"{exc}: {len(pending)} not ready, by state {states}{_at_the_broker(pending)}"
        ) from exc
    return time.monotonic() - started


def _at_the_broker(pending: Sequence[AsyncResult]) -> str:
    """Where ``pending`` texts are held at a ``redis://`` broker, for a timeout's message."""
    try:
        client = redis.Redis.from_url(pending[0].app.conf.broker_url, socket_timeout=2)
        ids = {result.id for result in pending}
        unacked = sum(
            json.loads(json.loads(entry)[0])["headers"]["id"] in ids
            for entry in client.hvals("unacked")
        )
        queued = sum(
            json.loads(message)["headers"]["id"] in ids
            for queue in LANE_QUEUES.values()
            for message in client.lrange(queue, 0, -1)
        )
        lock_ttl = client.ttl("unacked_mutex")
    except (redis.RedisError, ValueError, KeyError, IndexError, TypeError):
        return ""  # a Sentinel URL, or Redis down: the states alone
    lock = f"held, {lock_ttl} s left" if lock_ttl >= 0 else "free"
    return f"; at the broker {queued} of them queued, {unacked} unacked; the sweep's lock {lock}"


def outcomes(results: Iterable[AsyncResult], texts: Iterable[str]) -> dict[str, list[str]]:
    """Texts by outcome: ``ok`` (SUCCESS with the right vector), ``wrong``, ``failed``."""
    found: dict[str, list[str]] = {"ok": [], "wrong": [], "failed": []}
    for result, text in zip(results, texts, strict=True):
        if result.state != "SUCCESS":
            found["failed"].append(f"{text!r}: {result.state} {result.result!r}")
        elif result.result == expected(text):
            found["ok"].append(text)
        else:
            found["wrong"].append(text)
    return found


def all_redis_bytes(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key of ``client``'s database with its whole value, flattened to bytes."""
    dump: dict[bytes, bytes] = {}
    for key in client.scan_iter(count=500):
        kind = client.type(key)
        value: Any
        if kind == b"string":
            value = client.get(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"set":
            value = client.smembers(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        dump[key] = repr(value).encode()
    return dump


class RedisServer:
    """A private ``redis-server`` on a free port; ``stop()`` and ``start()`` restart it.

    With ``persistent=True`` it keeps an append-only file in ``workdir``, so a restart keeps
    the queue and the results, as a production Redis with AOF would.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = None,
        persistent: bool = False,
        tls: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        if tls and shutil.which("openssl") is None:
            pytest.skip("openssl is not installed")
        self.workdir = workdir
        self.password = password
        self.persistent = persistent
        self.tls = tls
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / f"redis-{self.port}.log"

    @property
    def ca_path(self) -> Path:
        return self.workdir / "ca.crt"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            query = f"ssl_cert_reqs=required&ssl_ca_certs={self.ca_path}"
            return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)

    def _make_certificates(self) -> None:
        """A throwaway CA and a server certificate for 127.0.0.1, valid for a day."""
        d = self.workdir
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        for argv in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "1", "-subj", "/CN=fault-suite-ca"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key",
             "-out", "redis.csr", "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "redis.crt", "-days", "1", "-extfile", "san.ext"],
        ):  # fmt: skip
            subprocess.run(["openssl", *argv], cwd=d, check=True, capture_output=True)

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(self.workdir), "--logfile", str(self._log),
                "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always"]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        argv += self.extra_args
        if self.tls:
            if not self.ca_path.exists():
                self._make_certificates()
            argv += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.workdir / "redis.crt"),
                     "--tls-key-file", str(self.workdir / "redis.key"),
                     "--tls-ca-cert-file", str(self.ca_path),
                     "--tls-auth-clients", "no"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self._log.read_text(errors='replace')}")
            try:
                with self.client() as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 15, f"the private redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        # Celery's AsyncResult.__del__ unsubscribes over the network; results collected after
        # the server is gone raise "unraisable" errors at the end of the session instead.
        if self.proc is None:
            self.start()
        # The apps a test made with app_for hold connections to this server that only
        # collection closes (Celery closes no result backend client); those a full or
        # restarted server broke are collected unclosed. They are the test's own apps, not
        # a leak of the code under test, so their ResourceWarning is not an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        self.stop()
