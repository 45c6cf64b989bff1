"""The scenarios: start the processes each needs, measure at idle and under load, stop them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery
from celery.result import AsyncResult, ResultSet

from bench.measure import ScenarioResult, cpu_seconds, peak_rss_bytes, process_tree
from bench.naive_tasks import NAIVE_TASK
from devstack import REPO_ROOT, StubProcess, WorkerProcess
from devstack.processes import _Process

__all__ = ["BenchContext", "NaiveWorkerProcess", "run_celery", "run_inprocess", "warm_stub"]

RESULT_KEY_PREFIX = "celery-task-meta-"
_WARMUP_TASKS = 3
_GET_TIMEOUT_S = 60.0


@dataclass
class BenchContext:
    """Shared by every scenario of one run."""

    redis_url: str
    stub: StubProcess
    dimensions: int
    texts: list[str]
    idle_samples: int
    log_dir: Path
    load_timeout_s: float

    def idle_texts(self) -> list[str]:
        return [f"idle sample {i}: a lonely text" for i in range(self.idle_samples + _WARMUP_TASKS)]

    def worker_env(self) -> dict[str, str]:
        # The bench's own variables win over whatever the caller's shell has set.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "EMBEDDINGS_BASE_URL": self.stub.base_url,
                "EMBEDDINGS_API_KEY": "sk-bench-not-a-secret",
                "EMBEDDINGS_DIMENSIONS": str(self.dimensions),
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        return env


class NaiveWorkerProcess(WorkerProcess):
    """``celery -A bench.naive_tasks worker``: WorkerProcess's readiness and stop, another app."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, name: str, extra_args: Sequence[str]
    ) -> None:
        self.hostname = f"{name}-{uuid.uuid4().hex[:8]}@localhost"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.naive_tasks",
            "worker",
            "-n",
            self.hostname,
            "--loglevel=INFO",
            *extra_args,
        ]
        _Process.__init__(self, argv, env, log_path)


def warm_stub(ctx: BenchContext) -> None:
    """Have the stub encode every vector once, so no scenario pays for a cold cache."""
    texts = ctx.texts + ctx.idle_texts()
    with httpx.Client(base_url=ctx.stub.base_url + "/", timeout=120) as http:
        for i in range(0, len(texts), 512):
            body = {
                "input": texts[i : i + 512],
                "model": "text-embedding-3-small",
                "encoding_format": "base64",
                "dimensions": ctx.dimensions,
            }
            http.post("embeddings", json=body).raise_for_status()
    ctx.stub.reset()


def _result_bytes(client: redis.Redis, task_id: str) -> tuple[int, int]:
    key = RESULT_KEY_PREFIX + task_id
    strlen = int(client.strlen(key))
    usage = client.memory_usage(key, samples=0)
    return strlen, int(usage or 0)


def run_celery(
    ctx: BenchContext,
    result: ScenarioResult,
    app: Celery,
    start_workers: Callable[[], list[WorkerProcess]],
    send: Callable[[str], AsyncResult],
) -> ScenarioResult:
    """Measure one queue-based scenario: idle samples one at a time, then the whole backlog."""
    client = redis.Redis.from_url(ctx.redis_url)
    task_ids: list[str] = []
    workers: list[WorkerProcess] = []
    try:
        workers = start_workers()
        for worker in workers:
            worker.wait_ready(app, timeout_s=60)
        idle = ctx.idle_texts()
        for i, text in enumerate(idle):
            started = time.perf_counter()
            async_result = send(text)
            async_result.get(timeout=_GET_TIMEOUT_S)
            task_ids.append(async_result.id)
            if i >= _WARMUP_TASKS:
                result.idle_latencies_ms.append((time.perf_counter() - started) * 1000)
        strlen, usage = _result_bytes(client, task_ids[-1])
        result.redis_result_bytes = strlen
        result.notes.append(f"MEMORY USAGE {usage} B")

        ctx.stub.reset()
        pids = [pid for worker in workers for pid in process_tree(worker.pid)]
        cpu_before = cpu_seconds(pids)
        producer_cpu_before = cpu_seconds([os.getpid()])
        started = time.perf_counter()
        sent_at: dict[str, float] = {}
        pending = []
        for text in ctx.texts:
            async_result = send(text)
            sent_at[async_result.id] = time.perf_counter()
            pending.append(async_result)
        done_at: dict[str, float] = {}

        def on_result(task_id: str, _value: Any) -> None:
            done_at[task_id] = time.perf_counter()

        ResultSet(pending, app=app).join_native(
            timeout=ctx.load_timeout_s, callback=on_result, propagate=True
        )
        result.elapsed_s = max(done_at.values()) - started
        producer_cpu = cpu_seconds([os.getpid()]) - producer_cpu_before
        result.notes.append(
            f"enqueueing took {max(sent_at.values()) - started:.1f} s; producer (this process) "
            f"CPU {producer_cpu * 1000 / len(ctx.texts):.2f} s per 1k texts"
        )
        pids = [pid for worker in workers for pid in process_tree(worker.pid)]
        result.worker_cpu_s = cpu_seconds(pids) - cpu_before
        result.peak_rss_bytes = peak_rss_bytes(pids)
        task_ids.extend(sent_at)
        result.load_latencies_ms = [(done_at[i] - sent_at[i]) * 1000 for i in sent_at]
        result.texts = len(ctx.texts)
        result.api_calls = int(ctx.stub.stats()["calls"])
    except Exception as exc:  # one failed scenario must not lose the others' numbers
        result.error = f"{type(exc).__name__}: {exc}"
        for worker in workers:
            result.notes.append(f"log {worker.log_path}")
    finally:
        for worker in workers:
            worker.stop()
        for i in range(0, len(task_ids), 1000):
            client.delete(*[RESULT_KEY_PREFIX + t for t in task_ids[i : i + 1000]])
        client.close()
    return result


def naive_workers(ctx: BenchContext, name: str, extra_args: Sequence[str]) -> list[WorkerProcess]:
    log = ctx.log_dir / f"{name}.log"
    return [NaiveWorkerProcess(ctx.worker_env(), log, name, extra_args)]


def project_workers(ctx: BenchContext, name: str, count: int) -> list[WorkerProcess]:
    # INFO, as the Dockerfile runs workers: per-task log lines are part of the cost.
    return [
        WorkerProcess(ctx.worker_env(), ctx.log_dir / f"{name}-{i}.log", name, "INFO")
        for i in range(count)
    ]


def send_naive(app: Celery) -> Callable[[str], AsyncResult]:
    def send(text: str) -> AsyncResult:
        return app.send_task(NAIVE_TASK, args=(text,))

    return send


def run_inprocess(ctx: BenchContext, result: ScenarioResult) -> ScenarioResult:
    """Scenario (c) in a subprocess of its own (see ``bench.inprocess``)."""
    texts_file = ctx.log_dir / "inprocess-texts.json"
    texts_file.write_text(json.dumps(ctx.texts))
    ctx.stub.reset()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", str(texts_file), str(ctx.idle_samples)],
        cwd=REPO_ROOT,
        env=ctx.worker_env(),
        capture_output=True,
        text=True,
        timeout=ctx.load_timeout_s + 60,
        check=False,
    )
    if proc.returncode != 0:
        result.error = f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"
        return result
    data = json.loads(proc.stdout)
    result.idle_latencies_ms = data["idle_ms"]
    result.load_latencies_ms = data["load_ms"]
    result.elapsed_s = data["elapsed_s"]
    result.worker_cpu_s = data["cpu_s"]
    result.peak_rss_bytes = data["peak_rss_bytes"]
    result.texts = len(ctx.texts)
    # The idle samples hit the stub too; they were one call each.
    result.api_calls = int(ctx.stub.stats()["calls"]) - ctx.idle_samples
    result.notes.append("no queue: no Redis result")
    return result
