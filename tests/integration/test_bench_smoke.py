"""The benchmark command runs end to end and prints its table (values are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.report import COLUMNS
from tests.integration.harness import REPO_ROOT, TEST_REDIS_URL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO_ROWS = [
    "(a) naive, prefork",
    "(a′) naive, threads",
    "(b) project, 1 worker",
    "(b) project, 2 workers",
    "(c) in-process EmbeddingBatcher",
]
TARGET_ROWS = [
    "texts per call under load",
    "(b)/(c) throughput",
    "(b)/(a) throughput",
    "p50 idle latency",
    "Redis bytes per 1,536-dim result",
]


@pytest.mark.timeout(240)
def test_a_quick_benchmark_run_prints_every_scenario_ratio_and_target(clean_redis, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env["REDIS_URL"] = TEST_REDIS_URL
    argv = [sys.executable, "-m", "bench", "--quick", "--texts", "16", "--idle-samples", "2",
            "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=220, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table_rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table_rows[0] == "| " + " | ".join(COLUMNS) + " |"
    for name in SCENARIO_ROWS:
        row = next((r for r in table_rows if r.startswith(f"| {name}")), None)
        assert row is not None, f"no row for {name}"
        assert row.count("|") == len(COLUMNS) + 1
        assert "failed" not in row
    for name in TARGET_ROWS:
        assert any(name in r and ("met" in r or "missed" in r) for r in table_rows), name
    assert "(b) project, 1 worker / (a) naive, prefork" in proc.stdout
    assert "(b) project, 1 worker / (c) in-process" in proc.stdout
    assert (tmp_path / "results.md").read_text() in proc.stdout
    assert "plot written" in proc.stdout or "plot skipped" in proc.stdout


@pytest.mark.timeout(180)
def test_the_gateway_benchmark_prints_its_lag_and_throughput_tables(clean_redis):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    argv = [sys.executable, "-m", "bench.gateway", "--texts", "48", "--lag-texts", "32",
            "--batch", "8", "--latency-ms", "5", "--dimensions", "16",
            "--redis-url", TEST_REDIS_URL]  # fmt: skip
    proc = subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=170, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "32 texts awaited at once in one event loop" in proc.stdout
    for row in (
        "| async producers, one text per coroutine |",
        "| gateway, one text per request |",
        "| gateway, 8 texts per request |",
    ):
        assert row in proc.stdout, row
    assert "event-loop lag p99" in proc.stdout and "through the gateway / producers" in proc.stdout
