"""The fastest p50 any first-in-first-out batcher can reach for a given texts per call.

Issue #12 asks for a flush policy with a lower p50 than celery-batches *and* no more calls,
at every load. This bound says, for evenly spaced arrivals, whether that can exist at all.

Texts arrive ``gap`` apart. A first-in-first-out batcher cuts the stream into consecutive
batches; a batch cannot leave before its last text arrives, so in a batch of ``s`` texts sent
at the earliest moment the waits are ``0, gap, ..., (s - 1) gap``, and every text then pays
the same ``base`` (the call and the pipeline). Sending later, or waiting for a free
connection, only adds to a wait, so this is a lower bound for every such policy, whatever it
knows of the future.

A policy chooses a mix of batch sizes. The p50 is ``base + k gap`` for the smallest ``k``
such that more than half of the texts wait ``k`` gaps or less (the p50 taken as the
``n // 2``-th of ``n`` sorted latencies, as the model and the sweep take it). A batch of
``s`` contributes ``min(s, k + 1)`` such texts out of ``s``. Maximising the mean batch size
under that one constraint is a linear programme over the mix, whose optimum uses at most two
sizes; ``fastest_p50_ms`` checks every pair.
"""

from __future__ import annotations

from fractions import Fraction
from itertools import combinations_with_replacement

__all__ = ["fastest_p50_ms", "largest_mean_batch"]


def _slack(size: int, k: int) -> Fraction:
    """Texts of a batch waiting at most ``k`` gaps, minus half its texts (> 0 helps)."""
    return Fraction(min(size, k + 1)) - Fraction(size, 2)


def _best_of_pair(a: int, b: int, k: int) -> tuple[Fraction, bool]:
    """The largest mean batch of a mix of sizes ``a`` < ``b`` whose p50 wait is ``k`` gaps.

    Returns the mean and whether it is reached (False: only approached, when it sits where
    exactly half the texts wait ``k`` gaps or less, which puts the p50 one gap later).
    """
    slack_a, slack_b = _slack(a, k), _slack(b, k)
    if slack_b > 0:
        return Fraction(b), True
    if slack_a <= 0:
        return Fraction(0), False  # no mix of the two has more than half at k or less
    # The share p of a-batches where the slack sums to zero: p slack_a + (1 - p) slack_b = 0.
    # Any larger share of a-batches is valid, so this mean is approached, not reached.
    p = slack_b / (slack_b - slack_a)
    return p * a + (1 - p) * b, False


def largest_mean_batch(k: int, batch_size: int) -> tuple[Fraction, bool]:
    """The largest mean texts per call with a p50 wait of ``k`` gaps, and whether reached."""
    best: tuple[Fraction, bool] = (Fraction(0), False)
    for a, b in combinations_with_replacement(range(1, batch_size + 1), 2):
        candidate = _best_of_pair(a, b, k)
        if candidate[0] > best[0] or (candidate[0] == best[0] and candidate[1]):
            best = candidate
    return best


def fastest_p50_ms(
    *, gap_ms: float, base_ms: float, min_texts_per_call: float, batch_size: int
) -> float:
    """The lowest p50 of any FIFO batcher making at most 1/``min_texts_per_call`` calls per text.

    ``min_texts_per_call`` above ``batch_size`` cannot be met at all: ``ValueError``.
    """
    if gap_ms < 0 or batch_size < 1:
        raise ValueError("gap_ms must be >= 0 and batch_size >= 1")
    if min_texts_per_call > batch_size:
        raise ValueError(f"no call carries more than {batch_size} texts")
    target = Fraction(min_texts_per_call)
    for k in range(batch_size):
        mean, reached = largest_mean_batch(k, batch_size)
        if mean > target or (mean == target and reached):
            return base_ms + k * gap_ms
    # Unreachable: with k = batch_size - 1 every text of a full batch waits k gaps or less.
    raise AssertionError("no p50 found")
