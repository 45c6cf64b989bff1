"""``BudgetGate``: one worker process's side of the shared budget, for the micro-batcher.

It turns the budget's answers into waits (with jitter after a cluster pause, never on the
limit's own pacing), settles each call's tokens, learns limits and pauses from the API's
headers and 429s, and rides out a Redis blip for a bounded time. Only the micro-batcher's
admitting thread calls ``try_admit``; ``after_call`` and ``after_rate_limit`` are thread-safe.
"""

from __future__ import annotations

import logging
import random as _random
import threading
import time
from collections.abc import Callable

from worker import metrics
from worker.budget.shared import Admission, SharedBudget, pause_for_exhausted_s
from worker.embeddings.backoff import backoff_delay
from worker.embeddings.client import CallResult
from worker.errors import EmbeddingBudgetWaitError, EmbeddingRateLimitError
from worker.names import LANE_INTERACTIVE
from worker.settings import Settings

__all__ = ["BudgetGate"]

log = logging.getLogger(__name__)

# While the budget's Redis is unreachable, ask it again this often (seconds).
_UNAVAILABLE_RETRY_S = 0.5


class BudgetGate:
    """Waits, pauses and settlements of one process against ``budget``.

    ``max_wait_s`` bounds a wait before texts become Celery retries; ``max_rate_limited`` is
    how many 429s one text may meet before it does. ``clock`` is monotonic seconds and
    ``random`` uniform in [0, 1): both injectable for tests.
    """

    def __init__(
        self,
        budget: SharedBudget,
        *,
        max_wait_s: float,
        max_rate_limited: int,
        initial_backoff_s: float,
        max_backoff_s: float,
        jitter_factor: float,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.budget = budget
        self.max_wait_s = max_wait_s
        self.max_rate_limited = max_rate_limited
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._jitter_factor = jitter_factor
        self._clock = clock
        self._random = random
        self._lock = threading.Lock()
        self._unavailable_since: float | None = None

    @classmethod
    def from_settings(cls, budget: SharedBudget, settings: Settings) -> BudgetGate:
        """A gate with the settings' wait bound and backoff shape."""
        return cls(
            budget,
            max_wait_s=settings.limiter_max_wait_s,
            max_rate_limited=settings.max_retries,
            initial_backoff_s=settings.initial_backoff_s,
            max_backoff_s=settings.max_backoff_s,
            jitter_factor=settings.jitter_factor,
        )

    def try_admit(
        self, model: str, tokens: int, lane: str = LANE_INTERACTIVE, *, serves_bulk: bool = False
    ) -> Admission:
        """The budget's answer for a call of ``tokens`` in ``lane``; a Redis blip reads as a
        short wait.

        Raises ``EmbeddingBudgetWaitError`` once Redis has been unreachable ``max_wait_s``.
        """
        try:
            admission = self.budget.try_acquire(model, tokens, lane, serves_bulk=serves_bulk)
        except EmbeddingBudgetWaitError:
            metrics.BUDGET_UNAVAILABLE.inc()
            now = self._clock()
            if self._unavailable_since is None:
                self._unavailable_since = now
                log.warning("the rate-limit budget's Redis is unreachable; calls wait for it")
            elif now - self._unavailable_since > self.max_wait_s:
                self._unavailable_since = None
                raise
            return Admission(False, _UNAVAILABLE_RETRY_S)
        if self._unavailable_since is not None:
            self._unavailable_since = None
            log.warning("the rate-limit budget's Redis is reachable again")
        return admission

    def sleep_s(self, admission: Admission) -> float:
        """How long to wait before asking again.

        A pause's end gets up to ``jitter_factor`` of it added, so the cluster's waiting calls
        do not return at once; the limit's own pacing is exact already.
        """
        if not admission.paused:
            return admission.wait_s
        return admission.wait_s * (1.0 + self._jitter_factor * self._random())

    def wait_too_long(self, model: str, wait_s: float) -> EmbeddingBudgetWaitError:
        """The error for a call the budget asks to wait ``wait_s``, past ``max_wait_s``.

        Its texts become Celery retries, no sooner than ``wait_s`` (``retry_after_s``).
        """
        error = EmbeddingBudgetWaitError(
            f"the shared rate-limit budget asks {model} calls to wait {wait_s:.1f}s, more "
            f"than EMBEDDINGS_LIMITER_MAX_WAIT_S ({self.max_wait_s:g}s)"
        )
        error.retry_after_s = wait_s
        return error

    def after_call(self, model: str, tokens_charged: int, call: CallResult) -> None:
        """Settle a successful call's tokens, share the API's limits, pause if none remain."""
        used = call.usage.get("total_tokens", tokens_charged)
        pause_s = pause_for_exhausted_s(call.rate_limits, used)
        self._report(model, used - tokens_charged, call, pause_s, "no budget remains")

    def after_rate_limit(self, model: str, exc: EmbeddingRateLimitError, attempt: int) -> float:
        """Pause ``model`` for the cluster after a 429: the server's hint, else the backoff.

        Returns the pause in seconds, jitter included.
        """
        hint = exc.retry_after_s
        if hint is None:
            hint = backoff_delay(
                attempt,
                initial_s=self._initial_backoff_s,
                max_s=self._max_backoff_s,
                jitter_factor=0.0,
            )
        pause_s = hint * (1.0 + self._jitter_factor * self._random())
        self._report(model, 0, exc, pause_s, f"the API answered 429 ({exc.api_message})")
        return pause_s

    def _report(
        self,
        model: str,
        correction: int,
        source: CallResult | EmbeddingRateLimitError,
        pause_s: float,
        why: str,
    ) -> None:
        limits = source.rate_limits
        if correction == 0 and pause_s <= 0 and (limits is None or limits.is_empty()):
            return
        try:
            started = self.budget.report(
                model, token_correction=correction, limits=limits, pause_s=pause_s
            )
        except EmbeddingBudgetWaitError as exc:
            # The call is done; a lost settlement only skews the budget for a moment.
            metrics.BUDGET_UNAVAILABLE.inc()
            log.debug("could not report to the rate-limit budget: %s", exc)
            return
        if started:
            metrics.BUDGET_PAUSES.inc()
            log.warning("model %s: %s; pausing it for every worker for %.2fs", model, why, pause_s)
