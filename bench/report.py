"""The markdown table, the ratios, the targets, and the PNG plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bench.measure import ScenarioResult, percentile

__all__ = ["COLUMNS", "Targets", "markdown", "plot"]

COLUMNS = [
    "scenario",
    "texts/s",
    "API calls/text",
    "p50 idle ms",
    "p99 idle ms",
    "p50 load ms",
    "p99 load ms",
    "worker CPU-s/1k texts",
    "peak worker RSS MiB",
    "Redis B/result",
]
KIB = 1024


@dataclass(frozen=True)
class Targets:
    """The issue's targets; the idle budget depends on the run's API latency and flush."""

    api_latency_ms: float
    flush_interval_ms: float
    texts_per_call: float = 7.95
    b_over_c: float = 0.9
    b_over_a: float = 8.0
    overhead_ms: float = 20.0
    redis_bytes: int = 9 * KIB

    @property
    def idle_p50_ms(self) -> float:
        return self.api_latency_ms + self.flush_interval_ms + self.overhead_ms


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _row(r: ScenarioResult) -> list[str]:
    if r.error:
        return [r.label, "failed", *["n/a"] * (len(COLUMNS) - 2)]
    return [
        r.label,
        _num(r.texts_per_s),
        _num(r.calls_per_text, 3),
        _num(percentile(r.idle_latencies_ms, 50)),
        _num(percentile(r.idle_latencies_ms, 99)),
        _num(percentile(r.load_latencies_ms, 50)),
        _num(percentile(r.load_latencies_ms, 99)),
        _num(r.cpu_s_per_1000, 2),
        _num(None if r.peak_rss_bytes is None else r.peak_rss_bytes / 2**20),
        "n/a" if r.redis_result_bytes is None else f"{r.redis_result_bytes:,}",
    ]


def _ratio(results: dict[str, ScenarioResult], top: str, bottom: str) -> float:
    a, b = results.get(top), results.get(bottom)
    if a is None or b is None or a.error or b.error:
        return math.nan
    return a.texts_per_s / b.texts_per_s


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _check(value: float, target: float, at_least: bool) -> tuple[str, str]:
    if math.isnan(value):
        return "n/a", _verdict(None)
    return _num(value, 2), _verdict(value >= target if at_least else value <= target)


def markdown(results: dict[str, ScenarioResult], targets: Targets, header: str) -> str:
    """The whole report: the table, the ratios and the targets, as markdown."""
    lines = [header, ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|")
    for r in results.values():
        lines.append("| " + " | ".join(_row(r)) + " |")
    lines.append("")
    lines.append("| ratio (throughput) | value |")
    lines.append("|---|---:|")
    for top, bottom in (("b1", "a"), ("b2", "a"), ("b1", "c"), ("b2", "c"), ("b1", "a_threads")):
        if top in results and bottom in results:
            name = f"{results[top].label} / {results[bottom].label}"
            lines.append(f"| {name} | {_num(_ratio(results, top, bottom), 2)} |")
    lines.append("")

    b = results.get("b1")
    rows: list[tuple[str, str, str, str]] = []
    if b is not None and not b.error:
        value, verdict = _check(b.texts_per_call, targets.texts_per_call, at_least=True)
        rows.append(
            (
                "texts per call under load, (b) 1 worker",
                f"≥ {targets.texts_per_call}",
                value,
                verdict,
            )
        )
        value, verdict = _check(_ratio(results, "b1", "c"), targets.b_over_c, at_least=True)
        rows.append(("(b)/(c) throughput, 1 worker", f"≥ {targets.b_over_c}", value, verdict))
        value, verdict = _check(_ratio(results, "b1", "a"), targets.b_over_a, at_least=True)
        rows.append(("(b)/(a) throughput, 1 worker", f"≥ {targets.b_over_a}", value, verdict))
        value, verdict = _check(
            percentile(b.idle_latencies_ms, 50), targets.idle_p50_ms, at_least=False
        )
        rows.append(
            ("p50 idle latency, one text (ms)", f"≤ {targets.idle_p50_ms:.0f}", value, verdict)
        )
        size = math.nan if b.redis_result_bytes is None else float(b.redis_result_bytes)
        value, verdict = _check(size, targets.redis_bytes, at_least=False)
        rows.append(
            (
                "Redis bytes per 1,536-dim result",
                f"≤ {targets.redis_bytes:,} (9 KiB)",
                value,
                verdict,
            )
        )
    lines.append("| target | wanted | measured | verdict |")
    lines.append("|---|---|---:|---|")
    lines.extend(f"| {a} | {w} | {m} | {v} |" for a, w, m, v in rows)

    notes = [
        f"- {r.label}: {r.error or '; '.join(r.notes)}"
        for r in results.values()
        if r.error or r.notes
    ]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, ScenarioResult], path: Path) -> str:
    """Write a bar chart of throughput and texts per call; return what happened, in words."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
    ok = [r for r in results.values() if not r.error]
    labels = [r.label for r in ok]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(labels, [r.texts_per_s for r in ok], color="tab:blue")
    left.set_xlabel("texts per second (higher is better)")
    left.invert_yaxis()
    right.barh(
        labels,
        [percentile(r.load_latencies_ms, 50) for r in ok],
        color="tab:orange",
        label="under load",
    )
    right.barh(
        labels,
        [percentile(r.idle_latencies_ms, 50) for r in ok],
        color="tab:green",
        height=0.4,
        label="idle",
    )
    right.set_xscale("log")
    right.set_xlabel("p50 latency enqueue → result, ms (log scale)")
    right.invert_yaxis()
    right.legend(loc="lower right")
    fig.suptitle("embedding pipeline benchmark")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"
