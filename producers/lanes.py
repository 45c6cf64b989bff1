"""Which lane a text goes in, checked before anything is enqueued, and how it gets there.

Two lanes (``worker.names``): **interactive**, the default of every producer function (a
web app's text, a user waiting), and **bulk**, the default of ``embed-file`` (a backfill).
Each lane is a broker queue of its own; a worker learns a text's lane from the routing key
it was delivered with, so each producer sends a text straight to its lane's queue with that
queue's name as the routing key (``lane_route``), and shows the lane in Flower
(``worker.redaction.task_reprs``).
"""

from __future__ import annotations

from worker.errors import EmbeddingInputError, EmbeddingInputTypeError
from worker.names import LANE_BULK, LANE_INTERACTIVE, LANES, queue_for_lane

__all__ = ["LANES", "LANE_BULK", "LANE_INTERACTIVE", "check_lane", "lane_route"]


def check_lane(lane: object) -> str:
    """Return ``lane`` if it names a lane, else raise the producers' bad-input error.

    ``EmbeddingInputTypeError`` (a ``TypeError``) for a non-``str``,
    ``EmbeddingInputError`` (a ``ValueError``) for any other string; both name the lanes.
    """
    allowed = ", ".join(LANES)
    if not isinstance(lane, str):
        raise EmbeddingInputTypeError(
            f"lane must be a str, one of {allowed}; got {type(lane).__name__}"
        )
    if lane not in LANES:
        raise EmbeddingInputError(f"lane must be one of {allowed}; got {lane!r}")
    return lane


def lane_route(lane: str) -> dict[str, str]:
    """Celery publish options that put a text in ``lane``'s queue, whatever routes say.

    The default (anonymous) exchange with the queue's name as routing key: the message lands
    in that queue, the worker's ``delivery_info['routing_key']`` names it, and a Celery
    retry (``Task.signature_from_request``) sends the text back to the same queue. An
    explicit exchange and routing key override any ``task_routes`` entry for the task,
    which could otherwise move a text out of its lane.
    """
    queue = queue_for_lane(check_lane(lane))
    return {"queue": queue, "exchange": "", "routing_key": queue}
