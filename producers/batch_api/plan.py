"""Planning: each text becomes one request line, and the lines are cut into batches within
the Batch API's limits (requests per file, embedding inputs per batch, bytes per file).

One input per request line, by choice. OpenAI's two counts are the same number (50,000
requests a file, 50,000 inputs a batch), so fuller lines would never put more texts in a
batch: they would only save the ~120 bytes a line's envelope costs. One input a line keeps
each text's fate its own: a rejected text fails alone, where a fuller line would fail its
neighbours too and need another batch, hours later, to tell them apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from worker.settings import Settings

__all__ = ["BatchLimits", "PlannedBatch", "custom_id_for", "plan_batches", "request_body"]

ENDPOINT = "/v1/embeddings"


@dataclass(frozen=True)
class BatchLimits:
    """Per batch: requests in its file, embedding inputs, bytes of its file."""

    max_requests: int
    max_inputs: int
    max_file_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchLimits:
        return cls(
            settings.batch_max_requests, settings.batch_max_inputs, settings.batch_max_file_bytes
        )


@dataclass(frozen=True)
class PlannedBatch:
    """The custom ids of one batch's requests, in order, and its input file."""

    custom_ids: list[str]
    data: bytes


def custom_id_for(line: int, text: str) -> str:
    """The request's id: the line and a hash of its text, so an edited line is a new request
    and a result is never mapped onto a text it was not made from."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"line-{line}-{digest}"


def request_body(settings: Settings, model: str) -> dict[str, Any]:
    """The body every request shares, but for its input: as the workers send it."""
    body: dict[str, Any] = {"model": model, "encoding_format": settings.encoding_format}
    if settings.dimensions:
        body["dimensions"] = settings.dimensions
    return body


def _line_template(body: dict[str, Any]) -> str:
    # The envelope and shared body serialised once; per line only the id and text are.
    shared = json.dumps({**body, "input": None}, ensure_ascii=False)
    shared = shared[: shared.rindex("null")].replace("%", "%%")
    return '{"custom_id": %s, "method": "POST", "url": "' + ENDPOINT + '", "body": ' + shared


def _request_line(template: str, custom_id: str, text: str) -> bytes:
    line = template % json.dumps(custom_id) + json.dumps(text, ensure_ascii=False) + "}}\n"
    # surrogatepass: a lone surrogate was already refused by validation, but never crash here.
    return line.encode("utf-8", "surrogatepass")


def plan_batches(
    texts: Iterable[tuple[str, str]], body: dict[str, Any], limits: BatchLimits
) -> Iterator[PlannedBatch]:
    """Cut ``(custom_id, text)`` pairs into batches, each as full as the limits allow."""
    per_batch = min(limits.max_requests, limits.max_inputs)
    template = _line_template(body)
    ids: list[str] = []
    lines: list[bytes] = []
    size = 0
    for custom_id, text in texts:
        line = _request_line(template, custom_id, text)
        if ids and (len(ids) >= per_batch or size + len(line) > limits.max_file_bytes):
            yield PlannedBatch(ids, b"".join(lines))
            ids, lines, size = [], [], 0
        ids.append(custom_id)
        lines.append(line)
        size += len(line)
    if ids:
        yield PlannedBatch(ids, b"".join(lines))
