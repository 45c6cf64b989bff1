"""Mutable stub state: settings, a FIFO of fault rules that calls consume, and call statistics."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from stubapi.ratelimit import LIMIT_HINTS, AccountLimit
from stubapi.vectors import DEFAULT_DIMENSIONS, MAX_DIMENSIONS, MAX_INPUTS

__all__ = [
    "DEFAULT_REJECT_SUBSTRING",
    "UNLIMITED",
    "CallStats",
    "FaultPlan",
    "FaultRule",
    "StubConfig",
    "StubState",
    "parse_fault",
    "parse_fault_request",
]

UNLIMITED = -1
DEFAULT_REJECT_SUBSTRING = "__REJECT__"
_RUNTIME_FIELDS: dict[str, tuple[type, ...]] = {
    "latency_ms": (int, float),
    "dimensions": (int,),
    "reject_substring": (str,),
    "rpm": (int,),
    "tpm": (int,),
    "limit_window_s": (int, float),
    "limit_hints": (list, tuple),
}
_LIMIT_FIELDS = frozenset({"rpm", "tpm", "limit_window_s", "limit_hints"})
_FIELDS = ("status", "count", "duration_s", "hang_s", "retry_after", "retry_after_ms")


@dataclass(frozen=True)
class FaultRule:
    """One injected failure: an error status and/or a hang, limited by a call count or duration."""

    status: int | None = None
    count: int | None = None
    duration_s: float | None = None
    hang_s: float | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None

    def __post_init__(self) -> None:
        if self.status is None and self.hang_s is None:
            raise ValueError("a fault needs 'status' and/or 'hang_s'")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"'status' must be an HTTP error status (400-599), got {self.status}")
        if self.hang_s is not None and not (math.isfinite(self.hang_s) and self.hang_s >= 0):
            raise ValueError("'hang_s' must be a finite number >= 0")
        if self.count is not None and self.duration_s is not None:
            raise ValueError("'count' and 'duration_s' are alternatives; give only one")
        if self.count is not None and not (self.count >= 1 or self.count == UNLIMITED):
            raise ValueError("'count' must be >= 1, or -1 for unlimited")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise ValueError("'duration_s' must be a finite number > 0")

    @property
    def calls(self) -> int | None:
        """Calls this rule applies to, ``UNLIMITED``, or None when it is time-limited."""
        if self.duration_s is not None:
            return None
        return 1 if self.count is None else self.count

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form without unset fields."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def _number(spec: Mapping[str, Any], key: str) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"'{key}' must be a number")
    return float(value)


def _integer(spec: Mapping[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"'{key}' must be an integer")
    return value


def _header_value(spec: Mapping[str, Any], key: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    # Accept numbers for convenience; header values travel as text anyway.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"'{key}' must be a string or a number")
    text = str(value)
    if not text or any(ch in text for ch in "\r\n"):
        raise ValueError(f"'{key}' must be a non-empty single-line value")
    return text


def parse_fault(spec: Mapping[str, Any]) -> FaultRule:
    """Build a FaultRule from its JSON form, raising ValueError on unknown keys or bad values."""
    unknown = set(spec) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown fault field(s): {', '.join(sorted(unknown))}")
    return FaultRule(
        status=_integer(spec, "status"),
        count=_integer(spec, "count"),
        duration_s=_number(spec, "duration_s"),
        hang_s=_number(spec, "hang_s"),
        retry_after=_header_value(spec, "retry_after"),
        retry_after_ms=_header_value(spec, "retry_after_ms"),
    )


def parse_fault_request(payload: Any) -> tuple[list[FaultRule], float | None]:
    """Parse a ``POST /_stub/faults`` body: a rule, a list of rules or ``{"faults": [...]}``.

    A top-level ``latency_ms`` is returned separately; on its own it queues no rule.
    """
    latency_ms = None
    if isinstance(payload, dict):
        payload = dict(payload)
        if "latency_ms" in payload:
            latency_ms = _number(payload, "latency_ms")
            if latency_ms is None or not (math.isfinite(latency_ms) and latency_ms >= 0):
                raise ValueError("'latency_ms' must be a finite number >= 0")
            del payload["latency_ms"]
        if "faults" in payload:
            if len(payload) > 1:
                raise ValueError("'faults' cannot be combined with fault fields")
            payload = payload["faults"]
        elif not payload and latency_ms is not None:
            payload = []
        else:
            payload = [payload]
    if not isinstance(payload, list) or not all(isinstance(spec, dict) for spec in payload):
        raise ValueError('body must be a fault object, a list of them, or {"faults": [...]}')
    return [parse_fault(spec) for spec in payload], latency_ms


class _Entry:
    __slots__ = ("expires_at", "remaining", "rule")

    def __init__(self, rule: FaultRule) -> None:
        self.rule = rule
        self.remaining = rule.calls
        self.expires_at: float | None = None


class FaultPlan:
    """Ordered queue of fault rules; each embedding call consumes from the head."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[_Entry] = deque()

    def add(self, rule: FaultRule) -> None:
        """Queue ``rule`` behind any pending rules."""
        with self._lock:
            entry = _Entry(rule)
            self._queue.append(entry)
            if len(self._queue) == 1:
                self._activate(entry, self._clock())

    def take(self) -> FaultRule | None:
        """Consume the fault for one call, or return None when the call should succeed."""
        with self._lock:
            now = self._clock()
            while self._queue:
                head = self._queue[0]
                if head.expires_at is not None:
                    if now < head.expires_at:
                        return head.rule
                    self._advance(head.expires_at)
                    continue
                if head.remaining is not None and head.remaining != UNLIMITED:
                    head.remaining -= 1
                    if head.remaining == 0:
                        self._advance(now)
                return head.rule
            return None

    def clear(self) -> None:
        """Drop every pending rule."""
        with self._lock:
            self._queue.clear()

    def pending(self) -> list[dict[str, Any]]:
        """Snapshot of pending rules with their remaining calls or seconds, head first."""
        with self._lock:
            now = self._clock()
            snapshot = []
            for entry in self._queue:
                item = entry.rule.to_dict()
                if entry.expires_at is not None:
                    item["remaining_s"] = round(max(0.0, entry.expires_at - now), 3)
                elif entry.remaining is not None:
                    item["remaining_calls"] = entry.remaining
                snapshot.append(item)
            return snapshot

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def _advance(self, started_at: float) -> None:
        self._queue.popleft()
        if self._queue:
            self._activate(self._queue[0], started_at)

    @staticmethod
    def _activate(entry: _Entry, started_at: float) -> None:
        # A duration runs from when the rule reaches the head of the queue (or was
        # added to an empty one), so queued outages follow one another back to back.
        if entry.rule.duration_s is not None:
            entry.expires_at = started_at + entry.rule.duration_s


class CallStats:
    """Thread-safe counters of embedding calls, as served by ``GET /_stub/stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = 0
        self._generation = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters; calls still in flight are not counted when they finish."""
        with self._lock:
            self._generation += 1
            self._calls = self._ok = self._failed = self._rate_limited = 0
            self._peak = self._current
            self._inputs_per_call: list[int] = []
            # Each distinct text's hash, to the index (in ``inputs_per_call``) of the first
            # call that embedded it: tests count what the API did before a given text left.
            self._first_call_of: dict[int, int] = {}

    def begin(self) -> int:
        """Record the start of an embeddings call; pass the returned token to ``end``."""
        with self._lock:
            self._calls += 1
            self._current += 1
            self._peak = max(self._peak, self._current)
            return self._generation

    def end(self, token: int, texts: list[str] | None, rate_limited: bool = False) -> None:
        """Record the end of a call: the texts it embedded, or None if it failed.

        ``rate_limited`` marks a failure that was the account limiter's 429.
        """
        with self._lock:
            self._current -= 1
            if token != self._generation:
                return
            if texts is None:
                self._failed += 1
                self._rate_limited += rate_limited
                return
            self._ok += 1
            index = len(self._inputs_per_call)
            self._inputs_per_call.append(len(texts))
            # Hashes, not texts: a long benchmark may send millions of distinct inputs.
            for text_hash in map(hash, texts):
                self._first_call_of.setdefault(text_hash, index)

    def first_call_of(self, text: str) -> int | None:
        """The index in ``inputs_per_call`` of the first call that embedded ``text``, if any."""
        with self._lock:
            return self._first_call_of.get(hash(text))

    def snapshot(self) -> dict[str, Any]:
        """The stats as a JSON-friendly dict."""
        with self._lock:
            return {
                "calls": self._calls,
                "ok_calls": self._ok,
                "failed_calls": self._failed,
                "rate_limited_calls": self._rate_limited,
                "inputs_per_call": list(self._inputs_per_call),
                "total_inputs": sum(self._inputs_per_call),
                "peak_concurrency": self._peak,
                "current_concurrency": self._current,
                "texts_seen": len(self._first_call_of),
            }


@dataclass(frozen=True)
class StubConfig:
    """Stub server settings; all but host, port, api_key and max_inputs may change at runtime.

    rpm and tpm (0 = no limit) emulate an account rate limit enforced per window of
    limit_window_s seconds; limit_hints picks the retry hints its 429s carry.
    """

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 0.0
    dimensions: int = DEFAULT_DIMENSIONS
    api_key: str | None = field(default=None, repr=False)
    reject_substring: str = DEFAULT_REJECT_SUBSTRING
    max_inputs: int = MAX_INPUTS
    rpm: int = 0
    tpm: int = 0
    limit_window_s: float = 1.0
    limit_hints: tuple[str, ...] = LIMIT_HINTS

    def __post_init__(self) -> None:
        # JSON hands over a list; a tuple keeps the frozen config immutable.
        object.__setattr__(self, "limit_hints", tuple(self.limit_hints))
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError("latency_ms must be a finite number >= 0")
        if not 1 <= self.dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be between 1 and {MAX_DIMENSIONS}")
        if self.max_inputs < 1:
            raise ValueError("max_inputs must be >= 1")
        if self.rpm < 0 or self.tpm < 0:
            raise ValueError("rpm and tpm must be >= 0")
        if not (math.isfinite(self.limit_window_s) and self.limit_window_s > 0):
            raise ValueError("limit_window_s must be a finite number > 0")
        if not all(isinstance(hint, str) and hint in LIMIT_HINTS for hint in self.limit_hints):
            raise ValueError(f"limit_hints must be drawn from {', '.join(LIMIT_HINTS)}")

    def public(self) -> dict[str, Any]:
        """The runtime-changeable settings; never includes api_key, since these end up in logs."""
        return {
            "latency_ms": self.latency_ms,
            "dimensions": self.dimensions,
            "reject_substring": self.reject_substring,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "limit_window_s": self.limit_window_s,
            "limit_hints": list(self.limit_hints),
        }


class StubState:
    """Everything the handler threads share: settings, faults, stats, limiter and a stop signal."""

    def __init__(
        self, config: StubConfig, limit_clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.initial = self.config = config
        self.faults = FaultPlan()
        self.limiter = AccountLimit(
            config.rpm, config.tpm, config.limit_window_s, config.limit_hints, limit_clock
        )
        self.stats = CallStats()
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def configure(self, changes: Mapping[str, Any]) -> StubConfig:
        """Apply changes to the runtime settings; ValueError if invalid.

        Any limit setting in ``changes``, even an unchanged value, zeroes the limiter's counters.
        """
        unknown = set(changes) - set(_RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, _RUNTIME_FIELDS[key]):
                raise ValueError(f"'{key}' has the wrong type")
        with self._lock:
            self.config = replace(self.config, **changes)
            if _LIMIT_FIELDS & set(changes):
                self._apply_limit()
            return self.config

    def reset(self) -> None:
        """Clear faults, stats and rate-limit counters and restore the initial settings."""
        self.faults.clear()
        self.stats.reset()
        with self._lock:
            self.config = self.initial
            self._apply_limit()

    def _apply_limit(self) -> None:
        c = self.config
        self.limiter.configure(c.rpm, c.tpm, c.limit_window_s, c.limit_hints)
