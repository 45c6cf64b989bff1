"""The load sweep runs end to end for the project and prints a row of numbers per load.

Values are not checked: timing assertions never run in tests. celery-batches needs its own
venv, so it is left out here (``--systems project``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from bench.sweep_report import COLUMNS
from tests.integration.harness import REPO_ROOT, TEST_REDIS_URL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICK_LOADS = ("1", "100")


@pytest.mark.timeout(60)
def test_a_quick_sweep_of_the_project_prints_a_row_of_numbers_per_load(clean_redis, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    argv = [sys.executable, "-m", "bench.sweep", "--quick", "--systems", "project",
            "--latency-ms", "20", "--dimensions", "64", "--redis-url", TEST_REDIS_URL,
            "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=55, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table_rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table_rows[0] == "| " + " | ".join(COLUMNS) + " |"
    rows = [row for row in table_rows if row.startswith("| project, ")]
    assert [row.split(" | ")[1] for row in rows] == list(QUICK_LOADS)
    for row in rows:
        cells = [cell.strip() for cell in row.strip("| ").split(" | ")]
        assert len(cells) == len(COLUMNS)
        *measured, load_avg = [float(cell.replace(",", "")) for cell in cells[2:]]
        assert all(math.isfinite(n) and n > 0 for n in measured), row
        assert math.isfinite(load_avg), row
    checks = [line[2:] for line in proc.stdout.splitlines() if line.startswith("- ")]
    for target in ("idle (1 % load", "texts per call at 100 %+ load"):
        assert any(c.startswith(("PASS: " + target, "FAIL: " + target)) for c in checks), target
    assert "SKIP: celery-batches did not run; no per-load comparison" in checks
    assert (tmp_path / "sweep.md").read_text() in proc.stdout
    assert "plot written" in proc.stdout or "plot skipped" in proc.stdout
