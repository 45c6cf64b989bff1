"""``BudgetAdmission``: when a due batch may leave under the shared budget, and its call.

The micro-batcher (worker/microbatcher.py) groups texts into batches; this decides, for the
batch at the head of a model's queue, whether the cluster's budget admits it now, how long
to wait otherwise, or that its texts must become Celery retries. It also makes the admitted
call, settles it, and says which texts wait again after a 429.

A batch asks in its lane (docs/lanes.md): interactive when any of its texts is, so an
interactive text riding with bulk ones is served first by every worker's budget.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from worker.budget.gate import BudgetGate
from worker.budget.split_calls import MeteredCalls
from worker.embeddings.batcher import EmbeddingBatcher
from worker.errors import EmbeddingBudgetWaitError, EmbeddingError, EmbeddingRateLimitError
from worker.waiting import Batch, Waiting

__all__ = ["BudgetAdmission", "Verdict"]

# One text's outcome from a call: its vector, or the error that text alone failed with.
Outcome = list[float] | EmbeddingError


@dataclass(frozen=True)
class Verdict:
    """The budget's word on a batch: ``admitted`` (charged ``tokens``), else wait ``wait_s``
    seconds and ask again, or, with ``error``, fail the model's queued texts with it."""

    admitted: bool = False
    tokens: int = 0
    wait_s: float = 0.0
    error: EmbeddingBudgetWaitError | None = None


class BudgetAdmission:
    """One process's admissions against ``gate``.

    ``lock`` is held by the one thread that asks the budget at a time (the others would only
    ask Redis again); ``stopping`` is set at shutdown and ends every wait.
    """

    def __init__(
        self,
        batcher: EmbeddingBatcher,
        gate: BudgetGate,
        *,
        stopping: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self.batcher = batcher
        self.gate = gate
        self.lock = threading.Lock()
        self._clock = clock
        self._metered = MeteredCalls(
            batcher.client, gate, admitting=self.lock, stopping=stopping, clock=clock
        )

    def ask(self, model: str, texts: list[str], lane: str, *, serves_bulk: bool = False) -> Verdict:
        """Whether a call of ``texts`` in ``lane`` may leave now; ``serves_bulk``: an
        interactive call that carries bulk texts too."""
        tokens = self.gate.budget.count_tokens(model, texts)
        try:
            admission = self.gate.try_admit(model, tokens, lane, serves_bulk=serves_bulk)
        except EmbeddingBudgetWaitError as exc:
            return Verdict(error=exc)
        if admission.admitted:
            return Verdict(admitted=True, tokens=tokens)
        if admission.wait_s > self.gate.max_wait_s:
            return Verdict(error=self.gate.wait_too_long(model, admission.wait_s))
        return Verdict(wait_s=self.gate.sleep_s(admission))

    def overdue_before(self) -> float:
        """Texts that began to wait before this clock reading waited past the bound."""
        return self._clock() - self.gate.max_wait_s

    def overdue_error(self, model: str) -> EmbeddingBudgetWaitError:
        """The error of texts that waited for budget past the bound: Celery retries."""
        return EmbeddingBudgetWaitError(
            f"waited more than EMBEDDINGS_LIMITER_MAX_WAIT_S ({self.gate.max_wait_s:g}s) "
            f"for the shared rate-limit budget of {model}"
        )

    def call(self, batch: Batch) -> list[Outcome] | EmbeddingRateLimitError:
        """The admitted call of ``batch``; the 429 itself when the API refused it."""
        try:
            call = self.batcher.client.embed(batch.texts, batch.model)
        except EmbeddingRateLimitError as exc:
            return exc
        except EmbeddingError as exc:
            # The split calls that isolate a rejected text count against the budget too.
            embed = functools.partial(self._metered.embed, lane=batch.lane)
            return self.batcher.isolate(batch.texts, batch.model, exc, embed=embed)
        self.gate.after_call(batch.model, batch.tokens, call)
        return list(call.embeddings)

    def after_rate_limit(
        self, model: str, entries: list[Waiting], exc: EmbeddingRateLimitError
    ) -> tuple[list[Waiting], list[Waiting]]:
        """Pause ``model`` for the cluster; split ``entries`` into (give up, wait again).

        A text that keeps meeting 429s becomes a Celery retry, whose countdown honours them.
        """
        for waiting in entries:
            waiting.rate_limited += 1
        self.gate.after_rate_limit(model, exc, max(w.rate_limited for w in entries))
        bound = self.gate.max_rate_limited
        return [w for w in entries if w.rate_limited > bound], [
            w for w in entries if w.rate_limited <= bound
        ]
