"""The retry schedule as pure functions, and the tenacity policy built from it.

Time and randomness come in as arguments so tests assert exact waits without sleeping.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from worker.errors import EmbeddingRetryableError

__all__ = ["backoff_delay", "build_retrying"]

Sleep = Callable[[float], None]
Random = Callable[[], float]  # uniform in [0, 1), like random.random


def backoff_delay(
    retry_number: int,
    *,
    initial_s: float,
    max_s: float,
    jitter_factor: float,
    random: Random = _random.random,
) -> float:
    """Seconds to wait before retry ``retry_number`` (1-based): initial·2^(n-1) ± jitter, ≤ max."""
    base = min(initial_s * 2.0 ** (retry_number - 1), max_s)
    # Jitter spreads retries of many processes so they do not hit a recovering API together.
    jittered = base * (1.0 + jitter_factor * (2.0 * random() - 1.0))
    return max(0.0, min(jittered, max_s))


def build_retrying(
    *,
    max_retries: int,
    initial_s: float,
    max_s: float,
    jitter_factor: float,
    sleep: Sleep = time.sleep,
    random: Random = _random.random,
    before_sleep: Callable[[RetryCallState], None] | None = None,
    never_retry: tuple[type[BaseException], ...] = (),
) -> Retrying:
    """A tenacity policy: retry ``EmbeddingRetryableError`` up to ``max_retries`` times.

    Errors of the ``never_retry`` types are raised at once, whatever their class.
    A ``retry_after_s`` attribute on the error (set from the server's headers) replaces the
    computed backoff, capped at ``max_s``. The last error is re-raised unchanged.
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, EmbeddingRetryableError) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, max_s)
        return backoff_delay(
            state.attempt_number,
            initial_s=initial_s,
            max_s=max_s,
            jitter_factor=jitter_factor,
            random=random,
        )

    def should_retry(exc: BaseException) -> bool:
        return (
            isinstance(exc, EmbeddingRetryableError)
            and exc.should_retry
            and not isinstance(exc, never_retry)
        )

    return Retrying(
        stop=stop_after_attempt(max_retries + 1),
        wait=wait,
        retry=retry_if_exception(should_retry),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
