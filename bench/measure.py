"""Numbers read from the outside: /proc CPU and memory of a process tree, percentiles."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ScenarioResult",
    "cpu_seconds",
    "peak_rss_bytes",
    "percentile",
    "process_tree",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces or parentheses: fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive right now (prefork children included)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by each of ``pids`` (own threads included)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime and stime are fields 14 and 15 of proc(5); index 0 here is field 3.
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def peak_rss_bytes(pids: list[int]) -> int:
    """Sum of VmHWM (peak resident set) over ``pids``; shared pages count once per process."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated; NaN when empty."""
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


@dataclass
class ScenarioResult:
    """What one scenario measured. Latencies are milliseconds; NaN or None when not measured."""

    key: str
    label: str
    texts: int = 0
    elapsed_s: float = math.nan
    api_calls: int = 0
    idle_latencies_ms: list[float] = field(default_factory=list)
    load_latencies_ms: list[float] = field(default_factory=list)
    worker_cpu_s: float = math.nan
    peak_rss_bytes: int | None = None
    redis_result_bytes: int | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def calls_per_text(self) -> float:
        return self.api_calls / self.texts if self.texts else math.nan

    @property
    def texts_per_call(self) -> float:
        return self.texts / self.api_calls if self.api_calls else math.nan

    @property
    def cpu_s_per_1000(self) -> float:
        return self.worker_cpu_s * 1000 / self.texts if self.texts else math.nan
