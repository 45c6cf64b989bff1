"""The wire contract between producers and workers: the task's name, the lanes and their queues.

Defined once, here, in a module that imports nothing, so ``producers`` can send by name
without importing the worker's task module (or Celery, to read a constant).

Two lanes share every worker: **interactive** (a web app's text, a user waiting) and
**bulk** (a backfill). Each lane has a broker queue of its own; workers consume both,
interactive first, and the micro-batcher and the shared budget serve interactive texts first
too (docs/lanes.md).
"""

from __future__ import annotations

__all__ = [
    "BULK_QUEUE",
    "EMBED_TEXT_TASK",
    "INTERACTIVE_QUEUE",
    "LANES",
    "LANE_BULK",
    "LANE_INTERACTIVE",
    "LANE_QUEUES",
    "TASK_QUEUE",
    "lane_of_queue",
    "queue_for_lane",
]

# Producers send this name and workers register their task under it; renaming it strands
# every message already queued under the old one.
EMBED_TEXT_TASK = "embeddings.embed_text"

LANE_INTERACTIVE = "interactive"
LANE_BULK = "bulk"
# In the order workers serve them.
LANES = (LANE_INTERACTIVE, LANE_BULK)

INTERACTIVE_QUEUE = "embeddings.interactive"
# The bulk lane keeps the queue name every text used before lanes existed, so messages
# queued by an older producer during a rolling upgrade are still drained (as bulk), and
# dashboards and scripts that watch "embeddings" keep working.
BULK_QUEUE = "embeddings"
LANE_QUEUES = {LANE_INTERACTIVE: INTERACTIVE_QUEUE, LANE_BULK: BULK_QUEUE}
# Celery's task_default_queue: a text sent by name without a queue (``send_task``, a retry
# of an old message) is a single text, so it goes to the interactive lane.
TASK_QUEUE = INTERACTIVE_QUEUE

_LANE_OF_QUEUE = {queue: lane for lane, queue in LANE_QUEUES.items()}


def queue_for_lane(lane: str) -> str:
    """The broker queue of ``lane``; a ``ValueError`` naming the lanes for any other value."""
    try:
        return LANE_QUEUES[lane]
    except (KeyError, TypeError):
        raise ValueError(f"lane must be one of {', '.join(LANES)}; got {lane!r}") from None


def lane_of_queue(queue: str | None) -> str:
    """The lane a message delivered from ``queue`` belongs to; an unknown queue is bulk."""
    return _LANE_OF_QUEUE.get(queue or "", LANE_BULK)
