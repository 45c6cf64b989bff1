"""No import circle in ``worker``, counting imports made only for type checking.

A circle under ``TYPE_CHECKING`` runs fine but means no module of it can be read, or moved,
alone: backoff → errors → ratelimit_headers → backoff was one (issue 25).
"""

from __future__ import annotations

import ast
from pathlib import Path

from devstack import REPO_ROOT

WORKER = REPO_ROOT / "worker"


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                # "from worker.embeddings import backoff" imports the submodule.
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & modules


def _graph() -> dict[str, set[str]]:
    paths = {_module(path): path for path in WORKER.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    circles, done = [], set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            circles.append([*trail[trail.index(name) :], name])
            return
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    return circles


def test_the_finder_sees_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c", "a"]]


def test_the_worker_package_imports_no_circle() -> None:
    graph = _graph()
    assert "worker.embeddings.ratelimit_headers" in graph["worker.errors"]  # read it all
    assert _circles(graph) == []
