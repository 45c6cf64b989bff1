"""The progress display: lines done over the whole file, and each batch's state and count."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["BatchProgress"]


class BatchProgress:
    """One bar of lines written, then one row per batch: its id, state and requests done."""

    def __init__(self, console: Console, *, disable: bool, label: str, total: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=disable,
        )
        self._label = label
        self._lines = self.progress.add_task(label, total=total)
        self._batches: dict[str, TaskID] = {}
        self._ended: set[str] = set()

    def __enter__(self) -> BatchProgress:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    def line_done(self, count: int = 1) -> None:
        self.progress.advance(self._lines, count)

    def batch(self, batch: dict[str, Any], lines: int) -> None:
        """Show ``batch`` (as the API returned it) of ``lines`` requests."""
        batch_id = str(batch["id"])
        status = str(batch.get("status"))
        counts = batch.get("request_counts") or {}
        done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
        description = f"  {batch_id} {status}"
        task = self._batches.get(batch_id)
        if task is None:
            task = self.progress.add_task(description, total=lines)
            self._batches[batch_id] = task
        self.progress.update(task, description=description, completed=done)
        if status in ("completed", "failed", "expired", "cancelled"):
            self._ended.add(batch_id)
        ended, total = len(self._ended), len(self._batches)
        self.progress.update(self._lines, description=f"{self._label} · batches {ended}/{total}")

    def print(self, message: str, style: str = "") -> None:
        self.progress.console.print(message, style=style, markup=False, highlight=False)
