"""The load sweep's report: the markdown table, the issue's target checks, and the plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.sweep_load import StepResult

__all__ = ["COLUMNS", "TargetChecks", "check_targets", "markdown", "plot"]

COLUMNS = [
    "system",
    "load %",
    "offered texts/s",
    "achieved texts/s",
    "API calls",
    "texts/call",
    "p50 ms",
    "p99 ms",
    "texts",
    "load avg",
]
# A load is idle when its texts arrive at least this many API latencies apart: each text
# finds the worker with no call in flight. (At 5 % of one worker's capacity a text arrives
# every ~46 ms, inside the previous text's 50 ms call: that is light load, not idle.)
IDLE_GAP_IN_LATENCIES = 2.0
# A sender more than this far behind its schedule (p99) offered a burstier load than asked.
LAG_NOTE_MS = 5.0


def _num(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def _row(step: StepResult) -> list[str]:
    if step.error and not step.latencies_ms:
        return [
            step.system,
            f"{step.load_pct:g}",
            _num(step.target_rate),
            "failed",
            *["n/a"] * (len(COLUMNS) - 4),
        ]
    return [
        step.system,
        f"{step.load_pct:g}",
        _num(step.offered_rate),
        _num(step.achieved_rate),
        f"{step.calls:,}",
        _num(step.texts_per_call, 2),
        _num(step.p50_ms),
        _num(step.p99_ms),
        f"{step.texts:,}",
        _num(step.load_avg, 2),
    ]


def markdown(steps: Sequence[StepResult], header: str, checks: Sequence[str]) -> str:
    """The table (one row per system and load), the target checks, and notes on anomalies."""
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|")
    lines += ["| " + " | ".join(_row(step)) + " |" for step in steps]
    lines += ["", "Target checks (issue #12):", "", *[f"- {line}" for line in checks]]
    notes = []
    for step in steps:
        where = f"{step.system} at {step.load_pct:g} %"
        if step.error:
            notes.append(f"{where}: {step.error}")
        if step.failed or step.lost:
            notes.append(f"{where}: {step.failed} failed and {step.lost} lost measured texts")
        if step.lag_p99_ms > LAG_NOTE_MS:
            notes.append(
                f"{where}: the sender ran behind its schedule (p99 {step.lag_p99_ms:.1f} ms, "
                f"max {step.lag_max_ms:.1f} ms)"
            )
    if notes:
        lines += ["", "Notes:", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TargetChecks:
    """Issue #12's targets for the project's default policy, with stub latency ``L`` (ms)."""

    latency_ms: float
    idle_extra_ms: float = 15.0  # idle p50 ≤ L + 15
    quarter_extra_ms: float = 30.0  # p50 at ~25 % load ≤ 2L + 30
    full_load_texts_per_call: float = 7.95  # at 100 % and above


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def check_targets(
    steps: Sequence[StepResult], project: str, peer: str | None, targets: TargetChecks
) -> list[str]:
    """One PASS/FAIL/SKIP line per target, for the rows of system ``project`` against ``peer``.

    ``peer`` is the celery-batches system's label (None when it did not run). The peer
    comparison is per load: a lower p50, and no more API calls per text (the absolute calls
    of two systems differ when one cannot keep up with the offered rate).
    """
    mine = {s.load_pct: s for s in steps if s.system == project and s.latencies_ms}
    if not mine:
        return [f"SKIP: no measured step of {project}"]
    lines = []
    latency = targets.latency_ms

    idle = mine[min(mine)]
    bound = latency + targets.idle_extra_ms
    gap_ms = 1000.0 / idle.target_rate
    if gap_ms >= IDLE_GAP_IN_LATENCIES * latency:
        lines.append(
            f"{_verdict(idle.p50_ms <= bound)}: idle ({idle.load_pct:g} % load, a text every "
            f"{gap_ms:.0f} ms) p50 {idle.p50_ms:.1f} ms ≤ L + {targets.idle_extra_ms:g} = "
            f"{bound:g} ms"
        )
    else:
        lines.append(
            f"SKIP: idle: no step with texts {IDLE_GAP_IN_LATENCIES:g} × L or more apart "
            f"(the lowest, {idle.load_pct:g} %, sends one every {gap_ms:.0f} ms)"
        )

    near = [load for load in mine if 15 <= load <= 35]
    if near:
        quarter = mine[min(near, key=lambda load: abs(load - 25))]
        bound = 2 * latency + targets.quarter_extra_ms
        lines.append(
            f"{_verdict(quarter.p50_ms <= bound)}: {quarter.load_pct:g} % load p50 "
            f"{quarter.p50_ms:.1f} ms ≤ 2L + {targets.quarter_extra_ms:g} = {bound:g} ms"
        )
    else:
        lines.append("SKIP: no step between 15 % and 35 % load")

    full = [mine[load] for load in sorted(mine) if load >= 100]
    if full:
        worst = min(full, key=lambda s: s.texts_per_call)
        wanted = targets.full_load_texts_per_call
        per_load = ", ".join(f"{s.load_pct:g} %: {s.texts_per_call:.2f}" for s in full)
        lines.append(
            f"{_verdict(worst.texts_per_call >= wanted)}: texts per call at 100 %+ load "
            f"≥ {wanted} ({per_load})"
        )
    else:
        lines.append("SKIP: no step at 100 % load or above")

    theirs = {s.load_pct: s for s in steps if peer and s.system == peer and s.latencies_ms}
    if not theirs:
        lines.append("SKIP: celery-batches did not run; no per-load comparison")
        return lines
    shared = sorted(set(mine) & set(theirs))
    slower = [f"{load:g} %" for load in shared if not mine[load].p50_ms < theirs[load].p50_ms]
    lines.append(
        f"{_verdict(not slower and bool(shared))}: p50 below celery-batches at every load"
        + (f" (not at {', '.join(slower)})" if slower else "")
    )
    more = [
        f"{load:g} %"
        for load in shared
        if not mine[load].texts_per_call >= theirs[load].texts_per_call
    ]
    lines.append(
        f"{_verdict(not more and bool(shared))}: API calls per text no more than "
        "celery-batches' at every load" + (f" (more at {', '.join(more)})" if more else "")
    )
    return lines


def plot(steps: Sequence[StepResult], path: Path, title: str, latency_ms: float) -> str:
    """Two panels against offered load: p50 (and p99) latency, texts per call; what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
    systems = list(dict.fromkeys(s.system for s in steps))
    # Loads sit evenly spaced, not to scale: 5 % and 10 % would crowd on a linear axis,
    # 100 % and 120 % on a log one.
    loads = sorted({s.load_pct for s in steps})
    rates = {s.load_pct: s.target_rate for s in steps}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for i, system in enumerate(systems):
        rows = sorted(
            (s for s in steps if s.system == system and s.latencies_ms), key=lambda s: s.load_pct
        )
        if not rows:
            continue
        color = f"C{i}"
        xs = [loads.index(s.load_pct) for s in rows]
        left.plot(xs, [s.p50_ms for s in rows], "o-", color=color, label=f"{system} p50")
        left.plot(xs, [s.p99_ms for s in rows], ":", color=color, alpha=0.6)
        right.plot(xs, [s.texts_per_call for s in rows], "o-", color=color, label=system)
    targets = TargetChecks(latency_ms)
    bounds = (
        (latency_ms + targets.idle_extra_ms, f"idle target L + {targets.idle_extra_ms:g}"),
        (
            2 * latency_ms + targets.quarter_extra_ms,
            f"25 % target 2L + {targets.quarter_extra_ms:g}",
        ),
    )
    for bound, label in bounds:
        left.axhline(bound, color="grey", linewidth=0.8, linestyle="--")
        left.annotate(
            label,
            (1, bound),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=8,
            color="grey",
        )
    for axis in (left, right):
        axis.set_xticks(range(len(loads)), [f"{t:g} %\n{rates[t]:.0f}/s" for t in loads])
        axis.set_xlabel("offered load: % of one project worker's capacity, texts/s (not to scale)")
        axis.grid(True, alpha=0.3)
    left.set_yscale("log")
    # Plain numbers at 1-2-5 steps: a log axis spanning one decade shows a single label else.
    left.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    left.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    left.yaxis.set_minor_formatter(NullFormatter())
    left.set_ylabel("enqueue → result, ms (p50 solid, p99 dotted; log scale)")
    left.legend(fontsize=8)
    right.set_ylabel("texts per API call")
    right.set_ylim(0, 8.5)
    right.legend(fontsize=8, loc="center right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"
