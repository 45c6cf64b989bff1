"""Flower, a real ``celery -A worker flower`` process, sees every text's task in its true state.

One run is shared by the module: Flower with basic auth, one worker, the stub API; a text
that is retried once, eight that succeed and one the API rejects. Each test then asks
Flower's REST API about it.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

import producers
from devstack import WorkerProcess, wait_for
from devstack.flower import FlowerProcess
from stubapi import StubServer
from tests.integration.harness import REPO_ROOT, TEST_API_KEY, TEST_REDIS_URL, worker_env
from worker.names import INTERACTIVE_QUEUE

pytestmark = pytest.mark.integration

FINAL_STATES = {"SUCCESS", "FAILURE"}


@dataclass
class FlowerRun:
    flower: FlowerProcess
    worker: WorkerProcess
    ok_ids: list[str]
    retried_id: str
    rejected_id: str


@pytest.fixture(scope="module")
def run(
    redis_client: redis.Redis, app: Celery, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlowerRun]:
    redis_client.flushdb()
    logs = tmp_path_factory.mktemp("flower")
    with StubServer(host="127.0.0.1", port=0, latency_ms=20, dimensions=16) as stub:
        # Flower gets the worker's whole environment, API key included, as it would from a
        # shared env file: the key must still never reach it.
        env = worker_env(stub.base_url, {"EMBEDDINGS_MAX_RETRIES": "0"})
        flower = FlowerProcess(env, logs / "flower.log", f"ops:{secrets.token_urlsafe(12)}")
        worker = WorkerProcess(env, logs / "worker.log", name="flowertest")
        try:
            flower.wait_ready()
            worker.wait_ready(app)
            # No in-process retries: one 503 becomes one Celery retry of this text alone.
            stub.add_fault(status=503, count=1)
            retried = producers.enqueue_text("retried once, then embedded", app=app)
            retried.get(timeout=30)
            texts = [f"watched in flower {i}" for i in range(8)]
            ok = [producers.enqueue_text(text, app=app) for text in texts]
            rejected = producers.enqueue_text("please __REJECT__ this one", app=app)
            for result in [*ok, rejected]:
                result.get(timeout=30, propagate=False)
            yield FlowerRun(flower, worker, [r.id for r in ok], retried.id, rejected.id)
        finally:
            worker.stop()
            flower.stop()


def _final_tasks(run: FlowerRun) -> dict[str, Any]:
    wanted = {*run.ok_ids, run.retried_id, run.rejected_id}

    def all_final() -> dict[str, Any] | None:
        tasks: dict[str, Any] = run.flower.api("tasks")
        if all(tasks.get(i, {}).get("state") in FINAL_STATES for i in wanted):
            return tasks
        return None

    tasks = wait_for(all_final, 20, "Flower to see every task in a final state")
    assert isinstance(tasks, dict)
    return tasks


def test_every_text_is_a_task_in_flower_with_its_true_state_worker_and_runtime(run):
    tasks = _final_tasks(run)
    for task_id in [*run.ok_ids, run.retried_id]:
        task = tasks[task_id]
        assert task["state"] == "SUCCESS"
        assert task["name"] == "embeddings.embed_text"
        assert task["worker"] == run.worker.hostname
        assert task["received"] is not None
        assert task["started"] is not None
        assert task["runtime"] is not None and task["runtime"] >= 0


def test_flower_shows_each_texts_lane_in_its_kwargs(run):
    tasks = _final_tasks(run)
    for task_id in [*run.ok_ids, run.rejected_id]:
        assert tasks[task_id]["kwargs"] == "{'lane': 'interactive'}"


def test_a_retried_text_still_shows_its_lane_in_flower(run):
    assert _final_tasks(run)[run.retried_id]["kwargs"] == "{'lane': 'interactive'}"


def test_a_rejected_text_shows_as_failure_with_the_api_message(run):
    task = _final_tasks(run)[run.rejected_id]
    assert task["state"] == "FAILURE"
    assert "EmbeddingAPIError" in task["exception"]
    assert "disallowed" in task["exception"]
    assert task["worker"] == run.worker.hostname


def test_a_text_retried_by_celery_shows_its_retry_and_then_success(run):
    task = _final_tasks(run)[run.retried_id]
    assert task["state"] == "SUCCESS"
    assert task["retries"] >= 1


def test_flower_lists_the_worker(run):
    workers = wait_for(
        lambda: run.worker.hostname in run.flower.api("workers", refresh="1"),
        20,
        "Flower to list the worker",
    )
    assert workers


def test_the_rest_api_answers_401_without_credentials(run):
    for path in ("/api/tasks", "/api/workers", "/"):
        response = httpx.get(run.flower.url + path, timeout=5)
        assert response.status_code == 401, path
    wrong = httpx.get(run.flower.url + "/api/tasks", auth=("ops", "wrong"), timeout=5)
    assert wrong.status_code == 401


def test_the_api_key_appears_nowhere_in_flower(run):
    _final_tasks(run)
    workers = run.flower.api("workers", refresh="1")
    # The worker's Celery config is in there too: that is where a leaked setting would show.
    assert "broker_url" in workers[run.worker.hostname]["conf"]
    seen = [
        json.dumps(run.flower.api("tasks")),
        json.dumps(workers),
        *(json.dumps(run.flower.api(f"task/info/{i}")) for i in [run.rejected_id, *run.ok_ids]),
        run.flower.log(),
    ]
    assert all(TEST_API_KEY not in text for text in seen)
    # The tasks are there (as a length and a hash, never the text), so the search above
    # looked at the right payloads.
    assert "<text: 19 chars, sha256 " in seen[0]
    assert "watched in flower" not in seen[0]


def test_flower_refuses_to_start_without_authentication(redis_client, tmp_path: Path):
    env = {
        k: v for k, v in worker_env("http://127.0.0.1:9/v1").items() if not k.startswith("FLOWER_")
    }
    env["REDIS_URL"] = TEST_REDIS_URL
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", "--port=0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "FLOWER_BASIC_AUTH" in done.stdout + done.stderr


def test_the_broker_tab_and_the_queue_length_api_read_the_redis_broker(run, app):
    # The banner names the broker by its scheme, not by the transport's class path.
    assert re.search(r"transport:\s+redis://", run.worker.log()), run.worker.log()[:2000]
    # Last in the module: with the worker gone, texts wait in the queue where Flower looks.
    run.worker.stop()
    for i in range(5):
        producers.enqueue_text(f"waiting for flower {i}", app=app)
    lengths = run.flower.api("queues/length")
    # Where a text sent with no lane waits: the interactive lane's queue.
    assert {"name": INTERACTIVE_QUEUE, "messages": 5} in lengths["active_queues"]
    page = httpx.get(f"{run.flower.url}/broker", auth=run.flower.auth, timeout=10)
    assert page.status_code == 200
    assert "redis://" in page.text and "embeddings" in page.text
