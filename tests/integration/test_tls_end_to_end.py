"""``rediss://`` end to end: worker, producers (sync and async), gateway and ``embed-file``.

A TLS-only redis-server started here with a throwaway CA (``faultkit.RedisServer(tls=True)``:
``openssl req -x509`` in the test's tmp dir). Its plaintext port is off, so every success
below went over TLS, certificates checked (``ssl_cert_reqs=required``). Skipped, saying so,
only when this redis-server was built without TLS.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

import producers
from devstack import WorkerProcess
from producers.aio import AsyncProducer
from tests.integration.faultkit import RedisServer, app_for, expected
from tests.integration.harness import NO_API_URL, REPO_ROOT, running_gateway, worker_env

pytestmark = pytest.mark.integration

GATEWAY_KEY = "gw-tls-key-3c1d9e"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("certs"), tls=True)
    try:
        server.start()
    except RuntimeError as exc:
        # "redis-server exited: <its log>": a build without TLS refuses the tls-* options.
        if any(word in str(exc).lower() for word in ("tls", "ssl")):
            pytest.skip(f"this redis-server was built without TLS support: {exc}")
        raise
    try:
        yield server
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def tls_worker(
    tls_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, object]]:
    from stubapi import StubServer

    with StubServer(host="127.0.0.1", port=0, latency_ms=20, dimensions=16) as stub:
        env = worker_env(stub.base_url, {"REDIS_URL": tls_redis.url})
        worker = WorkerProcess(env, tmp_path_factory.mktemp("w") / "worker.log", "tls-e2e")
        try:
            worker.wait_ready(app_for(tls_redis.url))
            yield worker, stub
        finally:
            worker.stop()


def test_the_plaintext_port_is_closed_so_what_follows_went_over_tls(tls_redis: RedisServer):
    assert tls_redis.url.startswith("rediss://")
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls_redis.port, socket_timeout=2).ping()


def test_sync_producers_over_tls(tls_redis: RedisServer, tls_worker):
    app = app_for(tls_redis.url)
    texts = [f"sync over TLS {i}" for i in range(20)]
    assert producers.embed_texts(texts, timeout=60, app=app) == [expected(t) for t in texts]
    assert producers.enqueue_text("one over TLS", app=app).get(timeout=60) == expected(
        "one over TLS"
    )


def test_async_producers_over_tls(tls_redis: RedisServer, tls_worker):
    app = app_for(tls_redis.url)
    texts = [f"async over TLS {i}" for i in range(20)]

    async def run() -> list[list[float]]:
        producer = AsyncProducer(app)
        try:
            return await producer.embed_texts(texts, timeout=60)
        finally:
            await producer.aclose()

    assert asyncio.run(run()) == [expected(t) for t in texts]


def test_the_gateway_over_tls(tls_redis: RedisServer, tls_worker, tmp_path: Path):
    env = worker_env(NO_API_URL, {"REDIS_URL": tls_redis.url, "GATEWAY_API_KEYS": GATEWAY_KEY})
    texts = ["gateway over TLS a", "gateway over TLS b"]
    with running_gateway(env, tmp_path / "gateway.log") as gateway:
        answer = httpx.post(
            gateway.base_url + "/embeddings",
            json={"model": "text-embedding-3-small", "input": texts, "encoding_format": "float"},
            headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
            timeout=60,
        )
    assert answer.status_code == 200, answer.text
    assert [d["embedding"] for d in answer.json()["data"]] == [expected(t) for t in texts]


def test_embed_file_over_tls(tls_redis: RedisServer, tls_worker, tmp_path: Path):
    texts = [f"a file over TLS {i}" for i in range(30)]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env["REDIS_URL"] = tls_redis.url
    done = subprocess.run(
        [sys.executable, "-m", "producers.cli", str(source), "-o", str(output), "--no-progress",
         "--timeout", "60"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = {r["id"]: r["embedding"] for r in map(json.loads, output.read_text().splitlines())}
    assert records == {i: expected(t) for i, t in enumerate(texts)}
