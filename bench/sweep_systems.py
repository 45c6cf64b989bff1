"""The systems the load sweep compares, each one worker process, and how each is started.

- the project: ``celery -A worker worker`` as configured, once per flush policy asked for;
- the naive task (``bench/naive_tasks.py``) on threads, with the project's concurrency;
- celery-batches 0.11 (``bench/batches_peer.py``) on prefork, in ``.venv-batches``, which
  ``ensure_batches_venv`` makes on first use: celery-batches pins ``celery<5.7`` and the
  project needs 5.7. The prefork pool is the setup its documentation assumes; 3 children keep
  up to 3 calls in flight, as the project's pool of 3 connections does.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.batches_config import BATCHES_QUEUE, BATCHES_TASK, FLUSH_EVERY, FLUSH_INTERVAL_S
from devstack import REPO_ROOT, WorkerProcess
from devstack.processes import _Process

if TYPE_CHECKING:  # bench.scenarios binds its Celery app to REDIS_URL when imported
    from bench.scenarios import BenchContext

__all__ = [
    "BATCHES_CONCURRENCY",
    "DEFAULT_POLICY",
    "BatchesPeerProcess",
    "System",
    "build_systems",
    "ensure_batches_venv",
]

DEFAULT_POLICY = "default"  # EMBEDDINGS_FLUSH_POLICY left unset: the worker's own default
BATCHES_VENV = REPO_ROOT / ".venv-batches"
BATCHES_REQUIREMENTS = ("celery[redis]>=5.6,<5.7", "celery-batches==0.11", "httpx>=0.27,<0.29")
BATCHES_CONCURRENCY = 3  # calls in flight, as the project's pool of 3 connections


@dataclass
class System:
    """One system under test: how to start its worker, and where its tasks go."""

    key: str
    label: str
    task: str
    queue: str
    start: Callable[[], WorkerProcess]
    setup: str  # how it runs, in words, for the report
    default_policy: bool = False  # the project with its default flush policy


class BatchesPeerProcess(WorkerProcess):
    """The celery-batches peer: WorkerProcess's readiness and stop, another venv and app."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int) -> None:
        self.hostname = f"sweep-batches-{uuid.uuid4().hex[:8]}@localhost"
        argv = [
            str(BATCHES_VENV / "bin" / "python"),
            "-m",
            "celery",
            "-A",
            "bench.batches_peer",
            "worker",
            "-n",
            self.hostname,
            "--loglevel=INFO",
            "--pool=prefork",
            f"--concurrency={concurrency}",
        ]
        _Process.__init__(self, argv, env, log_path)


def ensure_batches_venv() -> None:
    """Create ``.venv-batches`` with celery-batches 0.11 and its older Celery, once."""
    digest = hashlib.sha256(" ".join(BATCHES_REQUIREMENTS).encode()).hexdigest()[:12]
    stamp = BATCHES_VENV / f".installed-{digest}"  # a changed requirement reinstalls
    if stamp.exists():
        return
    python = BATCHES_VENV / "bin" / "python"
    if not python.exists():
        print(f"sweep: creating {BATCHES_VENV.name} for celery-batches", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(BATCHES_VENV)], check=True)
    log = BATCHES_VENV / "pip.log"
    with open(log, "wb") as out:
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *BATCHES_REQUIREMENTS],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if installed.returncode != 0:
        raise RuntimeError(f"could not install celery-batches into {BATCHES_VENV} (see {log})")
    for old in BATCHES_VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()


def build_systems(
    args: argparse.Namespace, ctx: BenchContext, default_policy: str
) -> tuple[list[System], System]:
    """The systems asked for, in order, and the project system that measures capacity."""
    from bench.naive_tasks import NAIVE_QUEUE, NAIVE_TASK
    from bench.scenarios import naive_workers
    from producers import EMBED_TEXT_TASK
    from worker import app as project_app

    concurrency = int(project_app.conf.worker_concurrency)
    starts = itertools.count()

    def project(policy: str) -> System:
        env = ctx.worker_env()
        effective = default_policy if policy == DEFAULT_POLICY else policy
        if policy != DEFAULT_POLICY:
            env["EMBEDDINGS_FLUSH_POLICY"] = policy  # unknown values are the worker's to judge
        is_default = effective == default_policy
        setting = "unset" if policy == DEFAULT_POLICY else f"set to {policy}"
        return System(
            "project",
            f"project, {effective}" + (" (default)" if is_default else ""),
            EMBED_TEXT_TASK,
            str(project_app.conf.task_default_queue),
            lambda: WorkerProcess(
                env, ctx.log_dir / f"project-{policy}-{next(starts)}.log", "sweep-project"
            ),
            f"`celery -A worker worker` as configured (threads ×{concurrency}), "
            f"EMBEDDINGS_FLUSH_POLICY {setting}",
            is_default,
        )

    systems: list[System] = []
    if "project" in args.systems:
        systems += [project(policy) for policy in args.policies]
    if "naive" in args.systems:
        pool = ["--pool=threads", f"--concurrency={concurrency}"]
        systems.append(
            System(
                "naive",
                f"naive, threads ×{concurrency}",
                NAIVE_TASK,
                NAIVE_QUEUE,
                lambda: naive_workers(ctx, "sweep-naive", pool)[0],
                f"one API call per task (bench/naive_tasks.py), threads ×{concurrency}",
            )
        )
    if "batches" in args.systems:
        children = args.batches_concurrency
        systems.append(
            System(
                "batches",
                f"celery-batches 0.11, prefork ×{children}",
                BATCHES_TASK,
                BATCHES_QUEUE,
                lambda: BatchesPeerProcess(ctx.worker_env(), ctx.log_dir / "batches.log", children),
                f"bench/batches_peer.py in .venv-batches, prefork ×{children}, flush_every "
                f"{FLUSH_EVERY}, flush_interval {FLUSH_INTERVAL_S:g} s, one API call per flush",
            )
        )
    # The first project policy asked for (or the default) sets the rates for every system.
    measure = next((system for system in systems if system.key == "project"), None)
    return systems, measure or project(DEFAULT_POLICY)
