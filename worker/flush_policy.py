"""When a partial batch leaves: the micro-batcher's flush policy, as pure functions.

A full batch (``batch_size`` texts) always leaves at once, and no text waits longer than
``flush_interval_s``. In between, the policy (``EMBEDDINGS_FLUSH_POLICY``) decides:

- ``nagle`` (default): a batch leaves at once when none of the process's calls is in flight,
  so an idle worker adds no wait to the API's latency; while calls are in flight, texts join
  the next call, which leaves when it is full, when the last call in flight ends (taking
  everything waiting, up to ``batch_size``), or at ``flush_interval_s``.
- ``predictive``: a batch waits only while its next text is expected before the batch's
  deadline (its oldest text's arrival plus ``flush_interval_s``); the expectation comes from
  the recent gaps between the model's arrivals (``ArrivalGaps``). A text on a quiet worker
  leaves at once; under load a batch leaves with the last text that could join it, instead
  of idling until the interval ends. Fewer calls than ``nagle`` at light load (the same as
  ``interval``), for a longer wait: for many lightly loaded workers under one request limit.
- ``continuous``: any free slot takes everything waiting at once (the continuous batching of
  TEI and vLLM): lowest latency, more and smaller calls at moderate load.
- ``interval``: a partial batch waits out ``flush_interval_s`` (the policy before 0.2).

Measured against each other and celery-batches in docs/benchmark.md, "Load sweep".
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ArrivalGaps", "FlushPolicy", "batch_is_due"]


class FlushPolicy(StrEnum):
    """The rule for partial batches; see the module docstring."""

    NAGLE = "nagle"
    PREDICTIVE = "predictive"
    CONTINUOUS = "continuous"
    INTERVAL = "interval"


class ArrivalGaps:
    """When one model's next text is expected, from the gaps between its recent arrivals.

    An exponentially weighted mean of the gaps (``weight`` on the newest), so a change of
    load shows within a few texts. A gap of ``quiet_after_s`` or more means the stream
    stopped: the estimate is dropped, and until the next gap is seen no text is expected
    (a text arriving on a quiet worker has nothing worth waiting for).
    """

    def __init__(self, quiet_after_s: float, weight: float = 0.3) -> None:
        if quiet_after_s <= 0 or not 0 < weight <= 1:
            raise ValueError("quiet_after_s must be positive and weight in (0, 1]")
        self.quiet_after_s = quiet_after_s
        self.weight = weight
        self._last: float | None = None
        self._mean_gap: float | None = None

    @property
    def mean_gap_s(self) -> float | None:
        return self._mean_gap

    def observe(self, now: float) -> None:
        """A text arrived at ``now`` (monotonic seconds)."""
        if self._last is not None:
            gap = max(0.0, now - self._last)
            if gap >= self.quiet_after_s:
                self._mean_gap = None
            elif self._mean_gap is None:
                self._mean_gap = gap
            else:
                self._mean_gap += self.weight * (gap - self._mean_gap)
        self._last = now

    def is_quiet(self, now: float) -> bool:
        """No arrival for ``quiet_after_s``: this estimator knows no more than a new one."""
        return self._last is None or now - self._last >= self.quiet_after_s

    def next_in_s(self, now: float) -> float | None:
        """Seconds until the next text is expected (0 when it is late); None: none expected."""
        if self._last is None or self._mean_gap is None:
            return None
        return max(0.0, self._last + self._mean_gap - now)


def batch_is_due(
    policy: FlushPolicy,
    *,
    waiting: int,
    batch_size: int,
    waited_s: float,
    flush_interval_s: float,
    in_flight: int,
    next_arrival_in_s: float | None = None,
    closing: bool = False,
) -> bool:
    """Whether ``waiting`` texts (the oldest of them ``waited_s`` old) should leave now.

    The caller holds a free slot; ``in_flight`` counts this process's calls under way;
    ``next_arrival_in_s`` is when the next text of this model is expected (None: none is).
    """
    if waiting <= 0:
        return False
    if closing or waiting >= batch_size or waited_s >= flush_interval_s:
        return True
    if policy is FlushPolicy.PREDICTIVE:
        # Due unless the next text is expected before the deadline: a text expected after
        # it could not join this batch anyway, so waiting for it would only add latency.
        return next_arrival_in_s is None or waited_s + next_arrival_in_s >= flush_interval_s
    if policy is FlushPolicy.CONTINUOUS:
        return True
    if policy is FlushPolicy.NAGLE:
        return in_flight == 0
    return False
