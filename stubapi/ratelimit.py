"""Account-wide rate limit like OpenAI's: per-minute limits enforced in short fixed windows."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["LIMIT_HINTS", "AccountLimit", "LimitDecision", "format_duration"]

# What a 429 may tell the client about when to retry; each can be switched off so client
# tests can exercise one hint at a time.
LIMIT_HINTS = ("retry-after-ms", "retry-after", "reset", "message")
ORGANIZATION = "org-stub"
_LABELS = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}


def format_duration(seconds: float) -> str:
    """Render a duration as OpenAI's headers do (Go style): ``20ms``, ``1.5s``, ``6m0s``."""
    total_ms = max(0, round(seconds * 1000))
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    whole_s, frac_ms = divmod(rest_ms, 1000)
    text = f"{whole_s}.{frac_ms:03d}".rstrip("0") if frac_ms else str(whole_s)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


def _allowance(per_min: int, window_s: float) -> int:
    # The epsilon keeps float noise (200 * 0.3 = 59.99...) from costing a whole unit.
    return max(1, math.floor(per_min * window_s / 60 + 1e-9))


@dataclass(frozen=True)
class LimitDecision:
    """The limiter's verdict on one request, with the headers its response should carry."""

    allowed: bool
    headers: dict[str, str]
    limit_hit: str | None = None  # "requests" or "tokens"
    retry_after_s: float | None = None  # until the window resets; set only for refusals
    limit_per_min: int = 0
    used_per_min: int = 0
    requested: int = 0
    hints: tuple[str, ...] = LIMIT_HINTS

    def error_message(self, model: str) -> str:
        """OpenAI's wording for a 429, naming ``model``; empty for an allowed request."""
        if self.limit_hit is None:
            return ""
        message = (
            f"Rate limit reached for {model} in organization {ORGANIZATION} on "
            f"{_LABELS[self.limit_hit]}: Limit {self.limit_per_min}, "
            f"Used {self.used_per_min}, Requested {self.requested}."
        )
        if "message" in self.hints and self.retry_after_s is not None:
            message += f" Please try again in {format_duration(self.retry_after_s)}."
        return message + " Visit https://platform.openai.com/account/rate-limits to learn more."


class AccountLimit:
    """Requests-per-minute and tokens-per-minute limits shared by every caller of the stub.

    Like OpenAI, each per-minute limit is enforced per fixed window of ``window_s``
    seconds with an allowance of ``limit * window_s / 60`` (at least 1). Refused requests
    still use up the window's budget, so a client that retries too eagerly keeps itself
    limited. A request larger than the window's token allowance can never succeed.
    """

    def __init__(
        self,
        rpm: int = 0,
        tpm: int = 0,
        window_s: float = 1.0,
        hints: Iterable[str] = LIMIT_HINTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.configure(rpm, tpm, window_s, hints)

    @property
    def enabled(self) -> bool:
        """True when a request or token limit is configured."""
        return self._rpm > 0 or self._tpm > 0

    def configure(
        self, rpm: int, tpm: int, window_s: float, hints: Iterable[str] = LIMIT_HINTS
    ) -> None:
        """Replace the limits (0 means none) and zero the counters; ValueError if invalid."""
        hints = tuple(hints)
        if rpm < 0 or tpm < 0:
            raise ValueError("rpm and tpm must be >= 0")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError("window_s must be a finite number > 0")
        unknown = set(hints) - set(LIMIT_HINTS)
        if unknown:
            raise ValueError(f"unknown hint(s): {', '.join(sorted(unknown))}")
        with self._lock:
            self._rpm, self._tpm, self._window_s, self._hints = rpm, tpm, window_s, hints
            self._request_allowance = _allowance(rpm, window_s) if rpm else 0
            self._token_allowance = _allowance(tpm, window_s) if tpm else 0
            self._reset_locked()

    def reset(self) -> None:
        """Zero the counters of the current window."""
        with self._lock:
            self._reset_locked()

    def check(self, tokens: int) -> LimitDecision:
        """Count one request of ``tokens`` tokens, refused or not, and decide whether it may run."""
        with self._lock:
            now = self._clock()
            reset_s = self._roll(now)
            self._used_requests += 1
            self._used_tokens += tokens
            headers = self._headers(reset_s)
            hit, limit_per_min, allowance, used, requested = None, 0, 1, 0, 0
            if self._rpm and self._used_requests > self._request_allowance:
                hit, limit_per_min, allowance = "requests", self._rpm, self._request_allowance
                used, requested = self._used_requests - 1, 1
            elif self._tpm and self._used_tokens > self._token_allowance:
                hit, limit_per_min, allowance = "tokens", self._tpm, self._token_allowance
                used, requested = self._used_tokens - tokens, tokens
            hints = self._hints
        if hit is None:
            return LimitDecision(True, headers, hints=hints)
        if "reset" not in hints:
            headers = {k: v for k, v in headers.items() if not k.startswith("x-ratelimit-reset-")}
        if "retry-after-ms" in hints:
            headers["retry-after-ms"] = str(round(reset_s * 1000))
        if "retry-after" in hints:
            headers["Retry-After"] = str(max(1, math.ceil(reset_s)))
        return LimitDecision(
            False,
            headers,
            limit_hit=hit,
            retry_after_s=reset_s,
            limit_per_min=limit_per_min,
            # Scaled to a per-minute figure so an exhausted window reads "Used" == "Limit".
            used_per_min=round(used * limit_per_min / allowance),
            requested=requested,
            hints=hints,
        )

    def peek(self) -> dict[str, str]:
        """The x-ratelimit-* headers for the current window, without counting a request."""
        with self._lock:
            return self._headers(self._roll(self._clock()))

    def _reset_locked(self) -> None:
        self._window: int | None = None
        self._used_requests = self._used_tokens = 0

    def _roll(self, now: float) -> float:
        """Start a new window if ``now`` is past the current one; return seconds until it ends."""
        window = math.floor(now / self._window_s)
        if window != self._window:
            self._window = window
            self._used_requests = self._used_tokens = 0
        # Rounded up to whole milliseconds so a client that waits exactly the hinted time
        # lands in the next window, not a hair before it; the epsilon keeps float noise
        # (1 - 0.98 = 0.0200...02) from adding a millisecond.
        remaining_ms = ((window + 1) * self._window_s - now) * 1000
        return max(1, math.ceil(remaining_ms - 1e-6)) / 1000

    def _headers(self, reset_s: float) -> dict[str, str]:
        headers = {}
        reset = format_duration(reset_s)
        for kind, per_min, allowance, used in (
            ("requests", self._rpm, self._request_allowance, self._used_requests),
            ("tokens", self._tpm, self._token_allowance, self._used_tokens),
        ):
            if per_min:
                headers[f"x-ratelimit-limit-{kind}"] = str(per_min)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, allowance - used))
                headers[f"x-ratelimit-reset-{kind}"] = reset
        return headers
