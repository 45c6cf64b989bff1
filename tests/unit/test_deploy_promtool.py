"""The dashboard's PromQL, evaluated by Prometheus's own ``promtool`` (skipped without it).

The alert rules have their own ``promtool test rules`` file (deploy/prometheus/alerts_test.yml,
run by ./scripts/check). Grafana's expressions are not rules, so each is written into a
temporary rules file here: every one must parse, and the lines that count events must show
a number, not a gap, before the first event (issue #26: a sum with a term that has no series
yet is empty). scripts/setup.sh installs promtool where apt allows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "embeddings.json"
# Any step Prometheus accepts works for the parse; 5m is what the alert rules use.
RATE_INTERVAL = "5m"


def _promtool() -> str:
    found = shutil.which("promtool")
    local = REPO_ROOT / ".tools" / "bin" / "promtool"
    if found is None and os.access(local, os.X_OK):
        found = str(local)
    if found is None:
        pytest.skip("promtool not installed (scripts/setup.sh installs it where apt allows)")
    return found


def _targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel, target) for panel in panels for target in panel["targets"]]


def _expr(target: dict[str, Any]) -> str:
    return str(target["expr"]).replace("$__rate_interval", RATE_INTERVAL)


def _target(legend: str) -> str:
    (expr,) = [_expr(t) for _, t in _targets() if t["legendFormat"] == legend]
    return expr


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": _expr(target)}
        for panel, target in _targets()
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def _expect(tmp_path: Path, series: list[dict[str, str]], exprs: dict[str, float]) -> None:
    """Evaluate each expression at 10 minutes over ``series`` (one sample a minute)."""
    test = {
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            {"expr": expr, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": value}]}
            for expr, value in exprs.items()
        ],
    }
    path = tmp_path / "dashboard_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [], "tests": [test]}))
    done = _run(_promtool(), "test", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_5xx_line_shows_retried_5xx_before_any_call_has_failed_for_good(
    tmp_path: Path,
) -> None:
    retried = 'embeddings_retry_total{instance="w1",attempt="1",error_type="EmbeddingServerError"}'
    _expect(tmp_path, [{"series": retried, "values": "0+12x20"}], {_target("5xx"): 0.2})


def test_the_counting_lines_show_zero_before_their_first_event(tmp_path: Path) -> None:
    # A fresh worker: it is up, and its labelled counters have no series yet.
    up = [{"series": 'up{job="embeddings-workers",instance="w1"}', "values": "1+0x20"}]
    _expect(tmp_path, up, {_target("5xx"): 0, _target("all errors"): 0})
