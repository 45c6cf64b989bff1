"""What an API says about its rate limit: ``x-ratelimit-*`` headers and "try again in" hints.

Pure functions over headers and text, so every format is tested without a server. OpenAI
sends on every response::

    x-ratelimit-limit-requests: 3000        x-ratelimit-limit-tokens: 1000000
    x-ratelimit-remaining-requests: 2999    x-ratelimit-remaining-tokens: 999990
    x-ratelimit-reset-requests: 20ms        x-ratelimit-reset-tokens: 6m0s

and a 429's message ends "Please try again in 2.812s." Anything unparsable is ignored.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "Clock",
    "RateLimitHeaders",
    "parse_duration_s",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "retry_hint_s",
]

Clock = Callable[[], float]  # seconds since the epoch, like time.time

# Go-style durations as OpenAI writes them: "20ms", "1s", "1.5s", "6m0s", "1h2m3.5s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_TRY_AGAIN = re.compile(r"try again in\s+((?:\d+(?:\.\d+)?(?:ms|us|µs|ns|h|m|s))+)", re.I)
# Hints past this are garbage or a day-long quota; neither should freeze the cluster for it.
_MAX_HINT_S = 24 * 3600.0


def parse_retry_after(headers: Mapping[str, str], *, now: Clock = time.time) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``Retry-After``.

    ``Retry-After`` may be seconds or an HTTP date. Returns None when absent or unparsable.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


def parse_duration_s(raw: str) -> float | None:
    """Seconds in a duration such as ``20ms``, ``1.5s`` or ``6m0s``; None if unparsable."""
    text = raw.strip()
    if not text:
        return None
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    if position != len(text):
        # A bare number: OpenAI never sends one, but compatible servers write seconds.
        try:
            value = float(text)
        except ValueError:
            return None
        return value if 0.0 <= value <= _MAX_HINT_S else None
    return total if total <= _MAX_HINT_S else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def _duration_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    return None if raw is None else parse_duration_s(raw)


@dataclass(frozen=True)
class RateLimitHeaders:
    """The ``x-ratelimit-*`` values of one response; None where absent or unparsable.

    Limits are per minute, as the provider's dashboard shows them; resets are in seconds.
    """

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    def is_empty(self) -> bool:
        """True when the response carried none of the headers."""
        return self == _EMPTY


_EMPTY = RateLimitHeaders()


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """Read the ``x-ratelimit-*`` headers, case-insensitively."""
    lowered = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-ratelimit-")}
    if not lowered:
        return _EMPTY
    return RateLimitHeaders(
        limit_requests=_int_header(lowered, "x-ratelimit-limit-requests"),
        limit_tokens=_int_header(lowered, "x-ratelimit-limit-tokens"),
        remaining_requests=_int_header(lowered, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int_header(lowered, "x-ratelimit-remaining-tokens"),
        reset_requests_s=_duration_header(lowered, "x-ratelimit-reset-requests"),
        reset_tokens_s=_duration_header(lowered, "x-ratelimit-reset-tokens"),
    )


def _message_hint_s(message: str) -> float | None:
    match = _TRY_AGAIN.search(message)
    return None if match is None else parse_duration_s(match.group(1))


def _reset_hint_s(limits: RateLimitHeaders) -> float | None:
    # The reset of whichever dimension ran out; if the server does not say, the later one.
    exhausted = [
        reset
        for remaining, reset in (
            (limits.remaining_requests, limits.reset_requests_s),
            (limits.remaining_tokens, limits.reset_tokens_s),
        )
        if remaining == 0 and reset is not None
    ]
    if exhausted:
        return max(exhausted)
    resets = [r for r in (limits.reset_requests_s, limits.reset_tokens_s) if r is not None]
    return max(resets) if resets else None


def retry_hint_s(
    headers: Mapping[str, str], message: str = "", *, now: Clock = time.time
) -> float | None:
    """Seconds a 429 asks the client to wait, from the first hint present, or None.

    In order: ``retry-after-ms``, ``Retry-After`` (seconds or an HTTP date), the message's
    "try again in 2.812s", then ``x-ratelimit-reset-requests``/``-tokens``.
    """
    hinted = parse_retry_after(headers, now=now)
    if hinted is not None and hinted <= _MAX_HINT_S:
        return hinted
    from_message = _message_hint_s(message)
    if from_message is not None:
        return from_message
    return _reset_hint_s(parse_rate_limit_headers(headers))
