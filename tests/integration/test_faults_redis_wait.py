"""A Redis restart under a producer that waits: ``embed_texts`` and ``embed-file`` get every vector.

On a private redis-server with an append-only file (as production should run it), restarted
while the producer waits for results. The texts were published before the restart and the
AOF keeps them, so the wait must outlive the blip: reconnect, subscribe again, read the
results stored meanwhile. Before, the synchronous wait raised a raw
``redis.exceptions.ConnectionError`` (issue 27, item 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import producers
from devstack import WorkerProcess, wait_for
from producers.client import enqueue_ids, wait_all
from tests.integration.faultkit import IGNORE_RESULT_DEL_IN_OUTAGES, RedisServer, app_for, expected
from tests.integration.harness import REPO_ROOT, worker_env
from worker.errors import EmbeddingResultStoreUnavailableError

pytestmark = [
    pytest.mark.integration,
    IGNORE_RESULT_DEL_IN_OUTAGES,
]

VISIBILITY_TIMEOUT_S = 10


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", persistent=True) as server:
        yield server


@pytest.fixture
def worker(aof_redis: RedisServer, stub, tmp_path: Path) -> Iterator[WorkerProcess]:
    overrides = {
        "REDIS_URL": aof_redis.url,
        "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
        "BROKER_UNACKED_RESTORE_INTERVAL": "1",
    }
    process = WorkerProcess(worker_env(stub.base_url, overrides), tmp_path / "w.log", "wait")
    process.wait_ready(app_for(aof_redis.url))
    yield process
    process.stop()


def _restart_once_mid_run(redis: RedisServer, stub, texts: int) -> None:
    wait_for(lambda: stub.stats()["ok_calls"] >= 2, 60, "the worker to be mid-run")
    assert stub.stats()["texts_seen"] < texts, "the run ended before the restart: no test"
    redis.stop()
    redis.start()


def test_embed_texts_gets_every_vector_across_a_redis_restart(
    aof_redis: RedisServer, worker: WorkerProcess, stub
):
    app = app_for(aof_redis.url)
    stub.set_latency_ms(200)
    texts = [f"waited for across a restart {i}" for i in range(300)]
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            outcome["vectors"] = producers.embed_texts(texts, timeout=120, app=app)
        except BaseException as exc:  # reported below, with its type
            outcome["error"] = exc

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    _restart_once_mid_run(aof_redis, stub, len(texts))
    waiter.join(150)
    assert not waiter.is_alive()
    assert "error" not in outcome, repr(outcome.get("error"))
    vectors = outcome["vectors"]
    assert len(vectors) == len(texts)
    for vector, text in zip(vectors, texts, strict=True):
        assert vector == expected(text)
    assert worker.alive()


def test_embed_texts_raises_the_typed_error_when_redis_stays_down_past_its_deadline(
    aof_redis: RedisServer, stub
):
    # No worker: the texts wait in the queue, and Redis goes away under the wait for good.
    app = app_for(aof_redis.url)
    ids = enqueue_ids(["never read 1", "never read 2"], app=app)
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            wait_all(ids, 4.0, app)
        except BaseException as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    aof_redis.stop()
    waiter.join(60)
    assert not waiter.is_alive()
    assert isinstance(outcome.get("error"), EmbeddingResultStoreUnavailableError), repr(outcome)
    assert "2 of 2 texts" in str(outcome["error"])


def test_embed_file_writes_every_vector_across_a_redis_restart(
    aof_redis: RedisServer, worker: WorkerProcess, stub, tmp_path: Path
):
    stub.set_latency_ms(200)
    texts = [f"a backfill across a restart {i}" for i in range(300)]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "corpus.out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env["REDIS_URL"] = aof_redis.url
    argv = [sys.executable, "-m", "producers.cli", str(source), "-o", str(output),
            "--no-progress", "--timeout", "120", "--window", "1000"]  # fmt: skip
    cli = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _restart_once_mid_run(aof_redis, stub, len(texts))
        _, stderr = cli.communicate(timeout=150)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    assert cli.returncode == 0, stderr
    records = {r["id"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert sorted(records) == list(range(len(texts)))
    for i, text in enumerate(texts):
        assert records[i]["embedding"] == expected(text), records[i]
