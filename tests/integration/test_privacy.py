"""A text never leaves the worker's code by default: not in Flower, its database, or the log.

One run: a persistent Flower (``--persistent=True --db=…``, as compose runs it), a worker at
INFO, and canary texts sent by the sync and async producers, one retried by Celery and one
rejected by the API. Then Flower's API, its database file and the worker's log are searched
for the canary.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

import producers
from devstack import WorkerProcess, wait_for
from devstack.flower import FlowerProcess
from stubapi import StubServer
from tests.integration.harness import worker_env
from worker.redaction import text_summary

pytestmark = pytest.mark.integration

SECRET = "123-45-6789"
CANARY = f"my SSN is {SECRET} canary"


@dataclass
class PrivacyRun:
    flower: FlowerProcess
    worker: WorkerProcess
    db_dir: Path
    task_ids: list[str]
    api_payloads: list[str]


async def _send_async(app: Celery) -> str:
    pending = await producers.aenqueue_text(f"{CANARY} async", app=app)
    await pending.get(timeout=30)
    return pending.id


@pytest.fixture(scope="module")
def run(
    redis_client: redis.Redis, app: Celery, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivacyRun]:
    redis_client.flushdb()
    logs = tmp_path_factory.mktemp("privacy")
    db_dir = logs / "flower-data"
    db_dir.mkdir()
    with StubServer(host="127.0.0.1", port=0, latency_ms=20, dimensions=16) as stub:
        env = worker_env(stub.base_url, {"EMBEDDINGS_MAX_RETRIES": "0"})
        flower = FlowerProcess(
            env,
            logs / "flower.log",
            f"ops:{secrets.token_urlsafe(12)}",
            extra_args=["--persistent=True", f"--db={db_dir / 'flower.db'}"],
        )
        worker = WorkerProcess(env, logs / "worker.log", name="privacy")
        try:
            flower.wait_ready()
            worker.wait_ready(app)
            stub.add_fault(status=503, count=1)  # the first text becomes a Celery retry
            retried = producers.enqueue_text(f"{CANARY} retried", app=app)
            retried.get(timeout=30)
            plain = producers.enqueue_text(CANARY, app=app)
            rejected = producers.enqueue_text(f"{CANARY} __REJECT__", app=app)
            plain.get(timeout=30)
            rejected.get(timeout=30, propagate=False)
            async_id = asyncio.run(_send_async(app))
            ids = [retried.id, plain.id, rejected.id, async_id]

            def all_final() -> bool:
                tasks = flower.api("tasks")
                return all(tasks.get(i, {}).get("state") in ("SUCCESS", "FAILURE") for i in ids)

            wait_for(all_final, 60, "Flower to see every canary task in a final state")
            payloads = [json.dumps(flower.api("tasks"))]
            payloads += [json.dumps(flower.api(f"task/info/{i}")) for i in ids]
        finally:
            worker.stop()
            flower.stop()  # SIGTERM: Flower writes its state to the database file
        yield PrivacyRun(flower, worker, db_dir, ids, payloads)


def test_flowers_api_shows_each_canary_task_as_a_length_and_hash_never_the_text(run):
    assert all(SECRET not in payload for payload in run.api_payloads)
    info = json.loads(run.api_payloads[2])  # the plain one
    assert info["args"] == f"({text_summary(CANARY)},)"
    assert info["state"] == "SUCCESS"
    rejected = json.loads(run.api_payloads[3])
    assert rejected["state"] == "FAILURE" and rejected["args"].startswith("(<text: ")
    retried = json.loads(run.api_payloads[1])
    assert retried["retries"] >= 1 and retried["args"].startswith("(<text: ")


def test_flowers_persisted_database_never_holds_the_text(run):
    files = [path for path in run.db_dir.iterdir() if path.is_file()]
    assert files, "Flower wrote no database"
    stored = b"".join(path.read_bytes() for path in files)
    # The tasks are in there, so the search looked at the right bytes.
    assert all(task_id.encode() in stored for task_id in run.task_ids)
    assert SECRET.encode() not in stored
    assert b"<text: " in stored


def test_the_worker_log_at_info_never_holds_the_text(run):
    log = run.worker.log_path.read_text(errors="replace")  # the worker has stopped
    assert "ready." in log and "retry" in log.lower()  # it logged the run, at INFO
    assert SECRET not in log


def test_celery_inspect_active_shows_a_running_text_as_a_length_and_hash(start_worker, stub, app):
    worker = start_worker(stub.base_url, name="inspected")
    stub.set_latency_ms(3000)  # long enough to be seen running
    result = producers.enqueue_text(CANARY, app=app)

    def running() -> list[dict[str, object]] | None:
        active = app.control.inspect(destination=[worker.hostname], timeout=1).active() or {}
        tasks = active.get(worker.hostname, [])
        return [t for t in tasks if t["id"] == result.id] or None

    (task,) = wait_for(running, 20, "the canary text to show in `celery inspect active`")
    assert task["args"] == f"({text_summary(CANARY)},)"
    assert SECRET not in json.dumps(task)
    result.get(timeout=30)
