"""How fast texts come back, and what that says about a request's time.

:class:`Pace` keeps the texts this gateway process got back over the last minute, and their
span, to give a throughput in texts per second: a lower bound for the cluster's, since other
producers' texts are not seen. Before one is measured, a request is estimated at
``ASSUMED_TEXTS_PER_S_PER_WORKER`` per worker that answered the ping (docs/gateway.md says
where that number comes from).

Two uses: a large request whose estimated time exceeds the request timeout is logged and
answered with ``X-Embeddings-Estimated-Seconds``; and a request that timed out is told why
(:func:`timeout_error`): no worker up, or more texts queued than the timeout allows.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from gateway.errors import SERVER_ERROR, ApiError

__all__ = [
    "ASSUMED_TEXTS_PER_S_PER_WORKER",
    "ESTIMATE_HEADER",
    "LARGE_REQUEST_TEXTS",
    "Pace",
    "estimated_seconds",
    "timeout_error",
]

# One worker (40 threads, 8 texts per call) against the stub at 50 ms per call embedded
# 2,048 texts in about 12 s: ~170 texts/s (issue #26). A guess only until measured.
ASSUMED_TEXTS_PER_S_PER_WORKER = 170.0
# Requests this large or larger are estimated before they are enqueued.
LARGE_REQUEST_TEXTS = 256
ESTIMATE_HEADER = "X-Embeddings-Estimated-Seconds"
WINDOW_S = 60.0


class Pace:
    """Texts per second this process got back over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._done: deque[tuple[float, float, int]] = deque()  # (start, end, texts)

    def now(self) -> float:
        return self._clock()

    def record(self, started: float, texts: int) -> None:
        """A request that started at ``started`` (``now()``) got its ``texts`` vectors."""
        self._done.append((started, self._clock(), texts))

    def texts_per_s(self) -> float | None:
        """Texts back per second over the window; None when nothing came back in it."""
        now = self._clock()
        while self._done and self._done[0][1] < now - self.window_s:
            self._done.popleft()
        if not self._done:
            return None
        span = max(end for _, end, _ in self._done) - min(start for start, _, _ in self._done)
        texts = sum(n for _, _, n in self._done)
        return texts / span if span > 0 else None


def estimated_seconds(
    texts: int, queued: int, workers: int | None, measured_texts_per_s: float | None
) -> float | None:
    """Seconds until ``texts`` more after ``queued`` are done; None when no worker is known."""
    rate = measured_texts_per_s
    if rate is None:
        if not workers:
            return None
        rate = workers * ASSUMED_TEXTS_PER_S_PER_WORKER
    return (queued + texts) / rate


def timeout_error(
    *,
    timeout_s: float,
    texts: int,
    lane: str,
    workers: int | None,
    queued: int | None,
    texts_per_s: float | None,
) -> ApiError:
    """The 503 for a request with no vectors within ``timeout_s``, saying why.

    Its texts stay queued: the message says a retry with the same input (or the same
    ``Idempotency-Key``) waits on them rather than enqueueing them again.
    """
    retry = (
        "Its texts stay queued: retrying the same request (same key, model and input, or "
        "the same Idempotency-Key) waits on them instead of enqueueing them again."
    )
    if workers == 0:
        return ApiError(
            503,
            f"No embedding within {timeout_s:g} s: no worker is up (0 answered a ping). " + retry,
            type=SERVER_ERROR,
            code="no_workers",
        )
    if queued is not None and texts_per_s:
        up = f"{workers} workers" if workers is not None else "an unknown number of workers"
        needed = math.ceil(queued / texts_per_s)
        return ApiError(
            503,
            f"No embedding within {timeout_s:g} s for {texts} texts: the {lane} lane still "
            f"holds {queued} texts, about {needed} s of work at the {texts_per_s:.0f} texts/s "
            f"seen in the last minute, with {up} up. Send fewer texts per request, add "
            "workers, or raise GATEWAY_REQUEST_TIMEOUT_S. " + retry,
            type=SERVER_ERROR,
            code="queue_too_deep",
        )
    known = f"{workers} workers answered a ping" if workers is not None else "workers unknown"
    depth = f"the {lane} lane holds {queued} texts" if queued is not None else "depth unknown"
    return ApiError(
        503,
        f"No embedding within {timeout_s:g} s for {texts} texts ({known}; {depth}): the "
        "queue is slower than the timeout. " + retry,
        type=SERVER_ERROR,
        code="timeout",
    )
