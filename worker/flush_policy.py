"""When a partial batch leaves: the micro-batcher's flush policy, as one pure function.

A full batch (``batch_size`` texts) always leaves at once, and no text waits longer than
``flush_interval_s``. In between, the policy (``EMBEDDINGS_FLUSH_POLICY``) decides:

- ``nagle`` (default): a batch leaves at once when none of the process's calls is in flight,
  so an idle worker adds no wait to the API's latency; while calls are in flight, texts join
  the next call, which leaves when it is full, when the last call in flight ends (taking
  everything waiting, up to ``batch_size``), or at ``flush_interval_s``. Letting any ending
  call take a partial batch cost fill under load (7.87 texts per call instead of 7.97).
- ``continuous``: any free slot takes everything waiting at once (the continuous batching of
  TEI and vLLM): lowest latency, more and smaller calls at moderate load.
- ``interval``: a partial batch waits out ``flush_interval_s`` (the policy before 0.2).

Measured against each other and celery-batches in docs/benchmark.md, "Load sweep".
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FlushPolicy", "batch_is_due"]


class FlushPolicy(StrEnum):
    """The rule for partial batches; see the module docstring."""

    NAGLE = "nagle"
    CONTINUOUS = "continuous"
    INTERVAL = "interval"


def batch_is_due(
    policy: FlushPolicy,
    *,
    waiting: int,
    batch_size: int,
    waited_s: float,
    flush_interval_s: float,
    in_flight: int,
    closing: bool = False,
) -> bool:
    """Whether ``waiting`` texts (the oldest of them ``waited_s`` old) should leave now.

    The caller holds a free slot; ``in_flight`` counts this process's calls under way.
    """
    if waiting <= 0:
        return False
    if closing or waiting >= batch_size or waited_s >= flush_interval_s:
        return True
    if policy is FlushPolicy.CONTINUOUS:
        return True
    if policy is FlushPolicy.NAGLE:
        return in_flight == 0
    return False
