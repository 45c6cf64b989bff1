"""The wheel a web app installs holds only what runs in production.

``pip install embedding-queue`` puts the wheel's top-level names into the web app's own
environment. They are the worker, the producers, the gateway, the project's Flower and the
worker's ``celeryconfig`` module; the stub API, the local stack and the benchmark run from a
checkout (``./scripts/demo``, ``./scripts/check``, ``./scripts/bench``), and the image copies
the stub on its own. The wheel is built here (about 2 s) from a copy of the sources, so that
setuptools' ``build/`` never lands in the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from devstack import REPO_ROOT

# Top-level names of the wheel besides its .dist-info directory.
PRODUCTION = {"worker", "producers", "gateway", "embeddings_flower", "celeryconfig.py"}
CHECKOUT_ONLY = {"stubapi", "devstack", "bench"}
# Files the installed packages read at run time, by path.
DATA_FILES = {
    "worker/celery_ext/fetch.lua",
    "worker/celery_ext/store_result.lua",
    "worker/budget/acquire.lua",
    "worker/budget/report.lua",
    "worker/tokens/cl100k_base.tiktoken",
    "embeddings_flower/flowerconfig.py",
}


def _uv() -> str | None:
    local = REPO_ROOT / ".tools" / "bin" / "uv"
    return str(local) if local.exists() else shutil.which("uv")


def _copy_sources(dest: Path) -> None:
    """What setuptools reads: pyproject, the readme, root modules and every package."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for entry in REPO_ROOT.iterdir():
        if entry.name in ("pyproject.toml", "README.md") or entry.suffix == ".py":
            shutil.copy2(entry, dest / entry.name)
        elif entry.is_dir() and (entry / "__init__.py").exists():
            shutil.copytree(entry, dest / entry.name, ignore=ignore)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    uv = _uv()
    if uv is None:
        if os.environ.get("CI"):
            pytest.fail("uv is not installed: scripts/setup.sh puts it in .tools/bin")
        pytest.skip("uv is not installed (scripts/setup.sh puts it in .tools/bin)")
    source = tmp_path_factory.mktemp("source")
    _copy_sources(source)
    # Every package in the copy, so that the test sees what the include list leaves out.
    assert {p.name for p in source.iterdir()} >= CHECKOUT_ONLY
    out = tmp_path_factory.mktemp("dist")
    argv = [uv, "build", "--wheel", "--python", sys.executable, "--out-dir", str(out), str(source)]
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    # The sync that installed the project left setuptools in uv's cache; fetch it otherwise.
    done = subprocess.run([*argv, "--offline"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=100)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_only_the_production_packages(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist()}
    dist_info = {name for name in top if name.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert top - dist_info == PRODUCTION
    assert not any(name.startswith(("tests/", "examples/")) for name in wheel.namelist())


def test_the_wheel_keeps_the_files_its_packages_read_at_run_time(wheel: zipfile.ZipFile) -> None:
    assert set(wheel.namelist()) >= DATA_FILES


def test_the_wheel_installs_the_three_console_scripts(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", wheel.read(entry_points).decode(), re.M))
    assert scripts == {
        "embed-file": "producers.cli:main",
        "embedding-gateway": "gateway.__main__:main",
        "embeddings-flower": "embeddings_flower.cli:main",
    }


def test_pyproject_includes_only_the_production_packages() -> None:
    """The same rule without a build, for a machine with no uv."""
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    assert {pattern.removesuffix("*") for pattern in include} == PRODUCTION - {"celeryconfig.py"}
    assert setuptools["py-modules"] == ["celeryconfig"]


def test_the_image_copies_the_stub_api_onto_its_pythonpath_and_not_the_dev_tools() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "COPY stubapi /opt/dev/stubapi" in dockerfile
    assert re.search(r"^ENV PYTHONPATH=/opt/dev$", dockerfile, re.M)
    assert not re.search(r"^COPY (devstack|bench)\b", dockerfile, re.M)
    compose = (REPO_ROOT / "docker-compose.yml").read_text()
    assert '["python", "-m", "stubapi"' in compose


def test_the_stub_and_the_bench_run_from_the_checkouts_root() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for module in ("stubapi", "bench"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (module, done.stderr)
        assert done.stdout.startswith(f"usage: python -m {module}")


def test_the_demo_runs_with_the_checkouts_root_on_pythonpath_as_scripts_demo_sets_it() -> None:
    assert 'export PYTHONPATH="$PWD' in (REPO_ROOT / "scripts" / "demo").read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "scripts/demo.py", "--help"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: demo.py")
