"""The per-process circuit breaker in front of the embeddings API, built on ``pybreaker``.

It counts API calls that failed with a transient error after every in-process retry. After
``fail_max`` of them in a row it opens: for ``reset_timeout_s`` every call fails at once with
``EmbeddingCircuitOpenError`` and the API is left alone. Then it half-opens, and the next
call decides: a success closes it, a failure opens it again. A 4xx rejection or a bad
response is the API answering, so it counts as a success, not a failure.

The state is exported as the ``embeddings_breaker_state`` gauge (0 closed, 1 open,
2 half-open), and an open-circuit error carries the seconds left in ``retry_after_s`` so the
Celery task can retry once the breaker lets calls through again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pybreaker
from prometheus_client import Gauge

from worker import metrics
from worker.errors import (
    EmbeddingCircuitOpenError,
    EmbeddingRateLimitError,
    EmbeddingRetryableError,
)
from worker.settings import Settings

__all__ = ["STATE_VALUES", "EmbeddingBreaker", "counts_as_failure"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# The gauge's encoding, documented on metrics.BREAKER_STATE.
STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_OPEN: 1, pybreaker.STATE_HALF_OPEN: 2}


def counts_as_failure(exc: BaseException, *, count_rate_limits: bool = True) -> bool:
    """True for an error that says the API is unwell: transient, and not our own refusal.

    With ``count_rate_limits=False`` a 429 is not a failure either: under the shared budget
    it means "slow down", and the budget pauses the cluster instead of this process.
    """
    if not count_rate_limits and isinstance(exc, EmbeddingRateLimitError):
        return False
    return isinstance(exc, EmbeddingRetryableError) and not isinstance(
        exc, EmbeddingCircuitOpenError
    )


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: EmbeddingBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._owner._on_state_change(
            None if old_state is None else str(old_state.name), str(new_state.name)
        )


class EmbeddingBreaker:
    """Opens after ``fail_max`` failed calls in a row, for ``reset_timeout_s`` seconds.

    Thread-safe. ``clock`` (monotonic seconds) only drives ``remaining_open_s``; pybreaker
    keeps its own wall-clock time for the transition to half-open.
    """

    def __init__(
        self,
        fail_max: int,
        reset_timeout_s: float,
        *,
        gauge: Gauge | None = metrics.BREAKER_STATE,
        clock: Callable[[], float] = time.monotonic,
        name: str = "embeddings-api",
        count_rate_limits: bool = True,
    ) -> None:
        self._clock = clock
        self._gauge = gauge
        self._opened_at: float | None = None
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            # pybreaker treats an excluded error as a success: it resets the count.
            exclude=[lambda exc: not counts_as_failure(exc, count_rate_limits=count_rate_limits)],
            listeners=[_StateListener(self)],
            name=name,
            # On the trip, surface the API's own error rather than pybreaker's.
            throw_new_error_on_trip=False,
        )
        if gauge is not None:
            gauge.set(STATE_VALUES[pybreaker.STATE_CLOSED])

    @classmethod
    def from_settings(
        cls, settings: Settings, *, count_rate_limits: bool = True
    ) -> EmbeddingBreaker:
        """The breaker configured by ``breaker_fail_max`` and ``breaker_reset_timeout_s``."""
        return cls(
            settings.breaker_fail_max,
            settings.breaker_reset_timeout_s,
            count_rate_limits=count_rate_limits,
        )

    def __repr__(self) -> str:
        return (
            f"EmbeddingBreaker(state={self.state!r}, fail_max={self.fail_max}, "
            f"reset_timeout_s={self.reset_timeout_s})"
        )

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        return str(self._breaker.current_state)

    @property
    def fail_max(self) -> int:
        """Failed calls in a row that open the breaker."""
        return int(self._breaker.fail_max)

    @property
    def reset_timeout_s(self) -> float:
        """Seconds the breaker stays open before it lets a trial call through."""
        return float(self._breaker.reset_timeout)

    @reset_timeout_s.setter
    def reset_timeout_s(self, seconds: float) -> None:
        self._breaker.reset_timeout = seconds

    @property
    def fail_counter(self) -> int:
        """Failed calls in a row so far."""
        return int(self._breaker.fail_counter)

    def remaining_open_s(self) -> float:
        """Seconds until the breaker lets a call through again; 0.0 unless it is open."""
        if self.state != pybreaker.STATE_OPEN or self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout_s - self._clock())

    def call(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``func`` through the breaker, or raise ``EmbeddingCircuitOpenError`` at once."""
        try:
            # ``calling()``, unlike ``CircuitBreaker.call``, does not hold the breaker's lock
            # while ``func`` runs, so up to pool_size calls still run at once.
            with self._breaker.calling():
                return func(*args, **kwargs)
        except pybreaker.CircuitBreakerError as exc:
            remaining = self.remaining_open_s()
            error = EmbeddingCircuitOpenError(
                f"circuit breaker open after {self.fail_max} failed API calls in a row; "
                f"no call made, next trial in {remaining:.1f}s"
            )
            error.retry_after_s = remaining
            raise error from exc

    def _on_state_change(self, old: str | None, new: str) -> None:
        if new == pybreaker.STATE_OPEN:
            self._opened_at = self._clock()
        if self._gauge is not None:
            self._gauge.set(STATE_VALUES[new])
        if old == new:
            # pybreaker notifies once per trial call that succeeds, and several can be in
            # flight when it half-opens: only the first one changes anything.
            log.debug("embeddings circuit breaker: still %s", new)
            return
        log.warning("embeddings circuit breaker: %s -> %s", old, new)
