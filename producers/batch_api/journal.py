"""The resume journal beside the output (``OUTPUT.batches``): what was submitted, by id.

Append-only JSON lines, each written and fsynced before the step it records is awaited
further: a batch's lines are journaled before its upload, its file id as soon as the upload
answers, its batch id as soon as the create answers, and its end once its records are on
disk. So a run stopped anywhere (Ctrl-C, a crash, a reboot) leaves enough for the next run
to re-attach: a batch with an id is polled, a file without a batch is looked up among the
API's batches before any create, and lines never uploaded are uploaded. Nothing is
submitted twice. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Journal", "PlanState", "journal_path"]


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + ".batches")


@dataclass
class PlanState:
    """One batch's story: its requests' custom ids, which submission of them this is, and
    the ids and final status the API gave it."""

    plan: str
    custom_ids: list[str]
    attempt: int = 1
    file_id: str | None = None
    batch_id: str | None = None
    finished: str | None = None


class Journal:
    """The plans of one output file, loaded from and appended to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.plans: dict[str, PlanState] = {}
        if path.exists():
            for raw in path.read_bytes().splitlines():
                try:
                    self._apply(json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line

    def live(self) -> list[PlanState]:
        """Plans whose records are not all written yet, in the order they were planned."""
        return [plan for plan in self.plans.values() if plan.finished is None]

    def planned(self, custom_ids: list[str], attempt: int = 1) -> PlanState:
        plan = PlanState(uuid.uuid4().hex, list(custom_ids), attempt)
        self._append({"kind": "planned", "plan": plan.plan, "custom_ids": plan.custom_ids,
                      "attempt": attempt})  # fmt: skip
        return plan

    def uploaded(self, plan: PlanState, file_id: str) -> None:
        self._append({"kind": "uploaded", "plan": plan.plan, "file_id": file_id})

    def created(self, plan: PlanState, batch_id: str) -> None:
        self._append({"kind": "created", "plan": plan.plan, "batch_id": batch_id})

    def finished(self, plan: PlanState, status: str) -> None:
        self._append({"kind": "finished", "plan": plan.plan, "status": status})

    def remove_if_done(self) -> bool:
        """Delete the journal once no plan is live: nothing is left to re-attach to."""
        if self.plans and not self.live():
            self.path.unlink(missing_ok=True)
            return True
        return False

    def _apply(self, record: dict[str, Any]) -> None:
        kind, key = record["kind"], record["plan"]
        if kind == "planned":
            self.plans[key] = PlanState(key, list(record["custom_ids"]), int(record["attempt"]))
        elif kind == "uploaded":
            self.plans[key].file_id = str(record["file_id"])
        elif kind == "created":
            self.plans[key].batch_id = str(record["batch_id"])
        elif kind == "finished":
            self.plans[key].finished = str(record["status"])

    def _append(self, record: dict[str, Any]) -> None:
        created = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if created:
            # The new file's directory entry must survive a crash too.
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self._apply(record)
