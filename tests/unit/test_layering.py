"""What imports what: the client needs no Celery, the product no Celery adaptations.

Also one meaning per name: the task's registered name is defined once, and the task
function, the in-process function and the producer helper have names of their own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from celery.app.utils import find_app

import producers
import worker
import worker.embeddings
from devstack import REPO_ROOT
from worker import names

WORKER_DIR = REPO_ROOT / "worker"
# Where the product and the Celery adaptations meet (see worker/celery_ext/__init__.py).
JOINS = {WORKER_DIR / "celery_app.py"}


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("module", ["worker.embeddings", "worker.settings", "worker.names"])
def test_importing_the_client_or_the_settings_never_imports_celery(module: str) -> None:
    done = _run_python(f"import sys, {module}; assert 'celery' not in sys.modules, 'celery'")
    assert done.returncode == 0, done.stderr


def test_a_web_app_importing_producers_loads_no_worker_metrics() -> None:
    code = (
        "import sys, producers, worker\n"
        "worker.app.conf.broker_url\n"
        "assert 'worker.observability' not in sys.modules, 'observability'\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client'\n"
    )
    done = _run_python(code)
    assert done.returncode == 0, done.stderr


def test_celery_finds_the_app_as_worker_app() -> None:
    assert find_app("worker") is worker.app
    assert worker.app.main == "worker"


def _product_modules() -> list[Path]:
    return [
        path
        for path in sorted(WORKER_DIR.rglob("*.py"))
        if "celery_ext" not in path.relative_to(WORKER_DIR).parts and path not in JOINS
    ]


def _mentions_of_the_layer(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("worker.celery_ext"):
            found.append(f"from {node.module} import …")
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("worker.celery_ext")]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("worker.celery_ext")
        ):
            # A class path that Celery would import by name counts as an import too.
            found.append(repr(node.value))
    return found


def test_the_product_imports_nothing_from_the_celery_adaptations() -> None:
    modules = _product_modules()
    assert WORKER_DIR / "tasks.py" in modules and WORKER_DIR / "runtime.py" in modules
    offenders = {
        str(path.relative_to(REPO_ROOT)): found
        for path in modules
        if (found := _mentions_of_the_layer(path))
    }
    assert offenders == {}


def test_the_task_name_is_defined_once_and_producers_send_it() -> None:
    import worker.tasks

    assert producers.EMBED_TEXT_TASK is names.EMBED_TEXT_TASK == "embeddings.embed_text"
    assert worker.tasks.embed_text_task.name == names.EMBED_TEXT_TASK
    assert worker.app.tasks[names.EMBED_TEXT_TASK].run.__name__ == "embed_text_task"
    assert "EMBED_TEXT_TASK" not in vars(worker.tasks).get("__all__", [])


def test_the_task_the_client_function_and_the_producer_helper_have_distinct_names() -> None:
    import worker.tasks

    assert not hasattr(worker.tasks, "embed_text")
    assert worker.embeddings.embed_text.__module__ == "worker.embeddings.batcher"
    assert producers.embed_text.__module__ == "producers.client"
    assert worker.tasks.embed_text_task.run.__name__ == "embed_text_task"
