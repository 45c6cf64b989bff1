"""deploy/: the Grafana dashboard and the Prometheus alert rules use only metrics that exist.

Every PromQL expression is read for the metric names it selects, which are compared with
what the workers export (``worker.metrics`` and the queue gauges of ``worker.observability``,
with the series suffixes Prometheus adds per type), and for the lanes and queues it names.
No ``promtool`` here: the rules file's structure is checked against Prometheus's rule-file
format, and each alert is checked to have ``promtool test rules`` cases
(deploy/prometheus/alerts_test.yml, which ./scripts/check runs when promtool is installed;
tests/unit/test_deploy_promtool.py evaluates the dashboard's expressions with it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import yaml
from prometheus_client import REGISTRY, Counter

import worker.metrics
from devstack import REPO_ROOT
from worker.names import LANE_QUEUES, LANES
from worker.observability import BrokerKeys, QueueDepthCollector

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "embeddings.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO_ROOT / "deploy" / "prometheus" / "alerts_test.yml"

# Series Prometheus itself provides for every scrape target.
PROMETHEUS_SERIES = {"up"}
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "gauge": ("",),
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}  # fmt: skip


def exported_series() -> set[str]:
    """Every series name a worker's ``/metrics`` can serve."""
    families = [(m.name, m.type) for m in REGISTRY.collect() if m.name.startswith("embeddings_")]
    keys = BrokerKeys(lanes={}, unacked="unacked")  # describing reads no key
    gauges = QueueDepthCollector(redis.Redis(port=1), keys).describe()
    families += [(m.name, m.type) for m in gauges]
    return {name + suffix for name, kind in families for suffix in _SUFFIXES[kind]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, e.g. "embeddings"
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries: [5m], [15m:1m]
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$__\w+|\$\w+", "", text)  # Grafana variables
    names = set()
    for found in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = found.group(1), found.group(2)
        if not call and name.lower() not in _KEYWORDS and not re.fullmatch(r"\d\w*", name):
            names.add(name)
    return names


def counters_absent_until_first_increment() -> set[str]:
    """Series of labelled counters: a worker exports none until a label set is first counted."""
    return {
        f"{metric._name}_total"
        for metric in vars(worker.metrics).values()
        if isinstance(metric, Counter) and metric._labelnames
    }


# sum(rate(name{…}[…])) and the like: one aggregated term of an expression.
_SUMMED_RATE = re.compile(
    r"sum\s*\(\s*(?:rate|irate|increase)\s*\(\s*(?P<name>[a-zA-Z_:][\w:]*)\s*"
    r"(?:\{[^}]*\})?\s*\[[^\]]*\]\s*\)\s*\)"
)


def unguarded_terms(expr: str, absent_until_counted: set[str]) -> list[str]:
    """Summed rates of counters with no series yet that take part in arithmetic unguarded.

    ``a + b`` is empty while ``b`` has no series, so each such term must read
    ``(sum(rate(b[…])) or vector(0))``: then it is next to ``or`` and a parenthesis, not to an
    arithmetic operator.
    """
    found = []
    for term in _SUMMED_RATE.finditer(expr):
        # The operator right before or right after the term ("" at either end of expr).
        neighbours = {expr[: term.start()].rstrip()[-1:], expr[term.end() :].lstrip()[:1]}
        if term["name"] in absent_until_counted and neighbours & set("+-*/"):
            found.append(term.group())
    return found


def _balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', "", expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr":
                yield value
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_the_name_reader_finds_metrics_and_skips_functions_labels_and_keywords() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(embeddings_budget_wait_seconds_bucket[5m])))"
        ' > 10 and deriv(max(embeddings_queue_depth{queue="x"})[15m:1m]) > 0'
        " or sum(rate(bogus_metric_total[$__rate_interval])) / count(up == 1) offset 5m"
    )
    assert metric_names(expr) == {
        "embeddings_budget_wait_seconds_bucket", "embeddings_queue_depth", "bogus_metric_total",
        "up",
    }  # fmt: skip


def test_the_exported_series_include_each_type_with_its_suffixes() -> None:
    series = exported_series()
    assert {"embeddings_success_total", "embeddings_latency_seconds_bucket",
            "embeddings_queue_depth", "embeddings_breaker_state"} <= series  # fmt: skip
    assert "embeddings_success" not in series


def test_every_metric_the_dashboard_uses_is_exported(dashboard: dict[str, Any]) -> None:
    exprs = list(_dashboard_exprs(dashboard))
    assert len(exprs) >= 10
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used - exported_series() - PROMETHEUS_SERIES == set()
    assert all(_balanced(expr) for expr in exprs)


def test_the_dashboard_covers_what_an_operator_watches(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(expr) for expr in _dashboard_exprs(dashboard)))
    assert {"embeddings_queue_depth", "embeddings_texts_total", "embeddings_success_total",
            "embeddings_rate_limited_total", "embeddings_retry_total", "embeddings_breaker_state",
            "embeddings_budget_wait_seconds_bucket",
            "embeddings_lane_wait_seconds_bucket"} <= used  # fmt: skip
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {"${datasource}"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_every_metric_the_alert_rules_use_is_exported(rules: list[dict[str, Any]]) -> None:
    used = set().union(*(metric_names(rule["expr"]) for rule in rules))
    assert used - exported_series() - PROMETHEUS_SERIES == set()
    assert {"embeddings_queue_depth", "embeddings_rate_limited_total", "embeddings_breaker_state",
            "embeddings_budget_wait_seconds_bucket",
            "embeddings_lane_wait_seconds_bucket"} <= used  # fmt: skip


def test_the_rules_file_has_prometheus_rule_file_structure(rules: list[dict[str, Any]]) -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [group["name"] for group in groups] == ["embeddings"]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and _balanced(rule["expr"]), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_the_guard_reader_flags_a_bare_sum_with_a_counter_that_has_no_series_yet() -> None:
    absent = {"b_total"}
    assert unguarded_terms("sum(rate(a_total[5m])) + sum(rate(b_total[5m]))", absent) == [
        "sum(rate(b_total[5m]))"
    ]
    assert unguarded_terms('sum(rate(b_total{x="1"}[5m])) / 2', absent) == [
        'sum(rate(b_total{x="1"}[5m]))'
    ]
    guarded = "(sum(rate(a_total[5m])) or vector(0)) + (sum(rate(b_total[5m])) or vector(0))"
    assert unguarded_terms(guarded, absent) == []
    assert unguarded_terms("sum(rate(b_total[5m])) > 0", absent) == []  # empty is "no"
    assert {"embeddings_failure_total", "embeddings_retry_total",
            "embeddings_success_total"} <= counters_absent_until_first_increment()  # fmt: skip
    assert "embeddings_rate_limited_total" not in counters_absent_until_first_increment()


def test_no_sum_in_the_rules_or_the_dashboard_is_empty_until_one_term_first_happens(
    dashboard: dict[str, Any], rules: list[dict[str, Any]]
) -> None:
    absent = counters_absent_until_first_increment()
    exprs = [rule["expr"] for rule in rules] + list(_dashboard_exprs(dashboard))
    assert {
        expr: unguarded_terms(expr, absent) for expr in exprs if unguarded_terms(expr, absent)
    } == {}


def test_the_rules_and_the_dashboard_name_only_real_lanes_and_queues(
    dashboard: dict[str, Any], rules: list[dict[str, Any]]
) -> None:
    exprs = [rule["expr"] for rule in rules] + list(_dashboard_exprs(dashboard))
    lanes = {m for expr in exprs for m in re.findall(r'\blane\s*=~?\s*"([^"]*)"', expr)}
    queues = {m for expr in exprs for m in re.findall(r'\bqueue\s*=~?\s*"([^"]*)"', expr)}
    assert lanes and lanes <= set(LANES)
    assert queues <= set(LANE_QUEUES.values())


def test_the_dashboard_shows_each_lane_s_queue_depth_and_wait(dashboard: dict[str, Any]) -> None:
    exprs = list(_dashboard_exprs(dashboard))
    by_lane = [expr for expr in exprs if re.search(r"by \((?:le, )?lane\)", expr)]
    assert any("embeddings_queue_depth" in expr for expr in by_lane)
    waits = [expr for expr in by_lane if "embeddings_lane_wait_seconds_bucket" in expr]
    assert {re.match(r"histogram_quantile\((0\.\d+)", expr)[1] for expr in waits} == {"0.5", "0.95"}
    # The backlog is the sum over the lanes' queues, each counted once however many workers.
    assert "sum(max by (queue) (embeddings_queue_depth))" in exprs


def _promtool_tests() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS_TEST.read_text())
    assert loaded["rule_files"] == [ALERTS.name]
    tests: list[dict[str, Any]] = loaded["tests"]
    return tests


def test_every_alert_has_promtool_cases_where_it_fires_and_where_it_stays_quiet(
    rules: list[dict[str, Any]],
) -> None:
    fires, quiet = set(), set()
    for test in _promtool_tests():
        assert test["name"] and test["input_series"] is not None, test
        for case in test["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in rules}
    assert alerts - fires == set()
    assert alerts - quiet == set()
    assert (fires | quiet) - alerts == set()  # no test of an alert that was renamed away


def test_every_docs_section_an_alert_points_to_exists(rules: list[dict[str, Any]]) -> None:
    pointers = [
        (doc, section)
        for rule in rules
        for text in rule["annotations"].values()
        for doc, section in re.findall(r'(docs/[\w.]+\.md), "([^"]+)"', text)
    ]
    assert ("docs/lanes.md", "When interactive texts wait") in pointers
    for doc, section in pointers:
        headings = re.findall(r"^#+ (.+)$", (REPO_ROOT / doc).read_text(), re.MULTILINE)
        assert section in headings, (doc, section)
