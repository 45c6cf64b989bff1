"""One table of Redis URL schemes (``worker.redis_client.REDIS_SCHEMES``), read everywhere.

Four copies with three contents once disagreed about ``unix://`` and ``sentinel://``.
"""

from __future__ import annotations

import ast

from devstack import REPO_ROOT
from worker.celery_ext import bulk_publish, config
from worker.redis_client import CELERY_REDIS_SCHEMES, REDIS_SCHEMES, SENTINEL_SCHEME
from worker.settings import Settings

TABLE = REPO_ROOT / "worker" / "redis_client.py"
PACKAGES = ("worker", "producers", "gateway")


def _scheme_literals(path: str) -> list[int]:
    tree = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            members: list[ast.expr | None] = list(node.elts)
        elif isinstance(node, ast.Dict):
            members = list(node.keys)
        else:
            continue
        if any(isinstance(m, ast.Constant) and m.value == "rediss" for m in members):
            lines.append(node.lineno)
    return lines


def test_no_module_but_the_table_spells_a_list_of_redis_schemes() -> None:
    found = {
        str(path.relative_to(REPO_ROOT)): lines
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if path != TABLE and (lines := _scheme_literals(str(path.relative_to(REPO_ROOT))))
    }
    assert found == {}


def test_the_celery_layer_takes_its_schemes_from_the_table() -> None:
    assert set(CELERY_REDIS_SCHEMES) == {"redis", "rediss"} < set(REDIS_SCHEMES)
    for scheme in (*CELERY_REDIS_SCHEMES, SENTINEL_SCHEME):
        url = f"{scheme}://127.0.0.1:6379/0"
        assert config.celery_config(Settings(redis_url=url))["result_backend"].endswith(url)
        assert scheme in bulk_publish._REDIS_SCHEMES
    # unix:// is a redis-py client's URL only: Celery keeps its own backend for it.
    unix = config.celery_config(Settings(redis_url="unix:///tmp/redis.sock"))
    assert unix["result_backend"] == "unix:///tmp/redis.sock"
