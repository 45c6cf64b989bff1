"""What one ``--batch-api`` run shares between submitting, polling and collecting."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from producers.batch_api.client import BatchClient
from producers.batch_api.journal import Journal
from producers.batch_api.plan import BatchLimits
from producers.batch_api.progress import BatchProgress
from producers.records import Item
from worker.settings import Settings
from worker.vector_cache import VectorCache

__all__ = ["BatchSummary", "Records", "RunContext"]


@dataclass
class BatchSummary:
    """What one run did: records, and what it sent and spent (``tokens`` from ``usage``)."""

    texts: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0  # of ``ok``, read from the vector cache instead of submitted
    submitted: int = 0  # lines uploaded in new batches this run, resubmissions included
    resubmitted: int = 0
    batches_created: int = 0
    reattached: int = 0  # batches an earlier run submitted, polled by this one
    tokens: int = 0
    unfinished: int = 0  # lines with no record: their batch was cancelled
    elapsed_s: float = 0.0

    @property
    def texts_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


class Records:
    """The output file: one JSON line per finished record, flushed as written."""

    def __init__(self, out: TextIO, on_written: Callable[[], None]) -> None:
        self._out = out
        self._on_written = on_written

    def vector(self, item: Item, vector: list[float]) -> None:
        self._write({"id": item.id, "line": item.line, "embedding": vector})

    def error(self, item: Item, error: str) -> None:
        self._write({"id": item.id, "line": item.line, "error": error})

    def sync(self) -> None:
        """On disk, before the journal says a batch's records are written."""
        self._out.flush()
        os.fsync(self._out.fileno())

    def _write(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._out.flush()
        self._on_written()


@dataclass
class RunContext:
    """``items`` holds this run's texts to embed by custom id, those in flight included;
    ``say`` prints a line above the progress bar."""

    client: BatchClient
    journal: Journal
    settings: Settings
    model: str
    body: dict[str, Any]
    limits: BatchLimits
    records: Records
    progress: BatchProgress
    say: Callable[[str], None]
    cache: VectorCache | None = None
    items: dict[str, Item] = field(default_factory=dict)
    summary: BatchSummary = field(default_factory=BatchSummary)
    on_failed: Callable[[Item, str], None] = lambda _item, _error: None
