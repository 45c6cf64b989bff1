"""Which lane a request's texts go in: the ``X-Embeddings-Lane`` header, else ``service_tier``.

- ``X-Embeddings-Lane: interactive|bulk`` names the lane (``producers.lanes``) directly.
- Else OpenAI's ``service_tier`` body field: ``flex`` (OpenAI's cheaper, slower tier) is
  the bulk lane; ``auto``, ``default`` and ``priority`` are the interactive lane.
- Else interactive: a request has a caller waiting for it.

The header wins, so a proxy or a batch job can set the lane without touching bodies. A
header value that names no lane, or a ``service_tier`` OpenAI does not define here, is a
400, answered before anything is enqueued.
"""

from __future__ import annotations

import reprlib
from typing import Any

from gateway.errors import ApiError
from producers.lanes import LANE_BULK, LANE_INTERACTIVE, LANES

__all__ = ["LANE_HEADER", "SERVICE_TIER_LANES", "lane_of_service_tier", "request_lane"]

LANE_HEADER = "X-Embeddings-Lane"
SERVICE_TIER_LANES = {
    "auto": LANE_INTERACTIVE,
    "default": LANE_INTERACTIVE,
    "flex": LANE_BULK,
    "priority": LANE_INTERACTIVE,
}

# A refusal quotes the value it refused, cut short: a body may hold megabytes of it.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_quote = _short.repr


def lane_of_service_tier(value: Any) -> str | None:
    """The lane of a request body's ``service_tier`` (None when absent or null), or a 400."""
    if value is None:
        return None
    lane = SERVICE_TIER_LANES.get(value) if isinstance(value, str) else None
    if lane is None:
        supported = ", ".join(f"'{tier}'" for tier in SERVICE_TIER_LANES)
        raise ApiError(
            400,
            f"Invalid value for 'service_tier': {_quote(value)}. "
            f"Supported values are: {supported}.",
            param="service_tier",
            code="invalid_value",
        )
    return lane


def request_lane(header: str | None, service_tier_lane: str | None) -> str:
    """The lane of a request: its ``X-Embeddings-Lane`` header, its body's, or interactive."""
    if header is None:
        return service_tier_lane or LANE_INTERACTIVE
    # Header values are matched as HTTP tokens usually are: case and padding do not matter.
    lane = header.strip().lower()
    if lane not in LANES:
        raise ApiError(
            400,
            f"The {LANE_HEADER} header must be one of {', '.join(LANES)}; got {_quote(header)}.",
            code="invalid_lane",
        )
    return lane
