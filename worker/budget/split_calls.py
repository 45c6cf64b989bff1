"""The split calls that isolate a rejected text, admitted and settled by the shared budget.

When the API rejects a whole call with a 400/413/422 that names no input, the batcher splits
the call in halves until the offending texts fail alone (``EmbeddingBatcher.isolate``): 6
more calls for one bad text of eight, up to 14 when every text is bad. Under a shared limit those
calls count against the account like any other, so each one waits for the budget's
admission first, as a queued batch does, and settles its tokens after. A wait past
``EMBEDDINGS_LIMITER_MAX_WAIT_S``, or a shutdown during the wait, fails that half's texts
with ``EmbeddingBudgetWaitError``: a Celery retry, never an unmetered call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from worker.budget.gate import BudgetGate
from worker.embeddings.client import CallResult, EmbeddingClient
from worker.errors import EmbeddingBudgetWaitError, EmbeddingRateLimitError
from worker.names import LANE_INTERACTIVE

__all__ = ["MeteredCalls"]


class MeteredCalls:
    """``embed`` as ``client.embed``, but admitted by ``gate`` and settled with it.

    ``admitting`` is the micro-batcher's lock for asking the budget (``BudgetGate`` expects
    one asking thread at a time); ``stopping`` is set at shutdown and ends a wait.
    """

    def __init__(
        self,
        client: EmbeddingClient,
        gate: BudgetGate,
        *,
        admitting: threading.Lock,
        stopping: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._gate = gate
        self._admitting = admitting
        self._stopping = stopping
        self._clock = clock

    def embed(
        self, texts: Sequence[str], model: str | None = None, *, lane: str = LANE_INTERACTIVE
    ) -> CallResult:
        """One call of ``texts``, once the budget admits it in ``lane``; raises the call's
        typed error."""
        key = model or self._client.config.model
        tokens = self._gate.budget.count_tokens(key, texts)
        self._wait_for_admission(key, tokens, lane)
        try:
            call = self._client.embed(texts, model)
        except EmbeddingRateLimitError as exc:
            self._gate.after_rate_limit(key, exc, 1)  # pauses the model for the cluster
            raise
        self._gate.after_call(key, tokens, call)
        return call

    def _wait_for_admission(self, model: str, tokens: int, lane: str) -> None:
        deadline = self._clock() + self._gate.max_wait_s
        while True:
            # Behind a queued batch that is waiting for budget itself, at most until deadline.
            if not self._admitting.acquire(timeout=max(0.0, deadline - self._clock())):
                raise self._gate.wait_too_long(model, self._gate.max_wait_s)
            try:
                admission = self._gate.try_admit(model, tokens, lane)
            finally:
                self._admitting.release()
            if admission.admitted:
                return
            if self._clock() + admission.wait_s > deadline:
                raise self._gate.wait_too_long(model, admission.wait_s)
            if self._stopping.wait(self._gate.sleep_s(admission)):
                error = EmbeddingBudgetWaitError("the worker is shutting down")
                error.retry_after_s = 0.0
                raise error
