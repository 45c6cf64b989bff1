"""Collecting a batch that ended: its records written, its unfinished lines sent again.

Results are mapped by custom id (the output comes in no particular order). A vector is
written and put in the vector cache; a text the API rejected gets an error record; a line
the batch never ran (it expired, failed or was cancelled) is unfinished. Unfinished lines
of an expired or failed batch go in a new batch, saying so, up to
``EMBEDDINGS_BATCH_MAX_ATTEMPTS`` submissions; a cancelled batch's (``--cancel``, or someone
else's cancel) are left without a record, for a later run to submit.
Only once the records are on disk does the journal mark the batch finished; then its files
are deleted from the API.
"""

from __future__ import annotations

import contextlib
from typing import Any

from producers.batch_api.context import RunContext
from producers.batch_api.journal import PlanState
from producers.batch_api.results import LineResult, read_result
from producers.batch_api.submit import submit
from worker.errors import EmbeddingError

__all__ = ["TERMINAL", "collect"]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def _results(ctx: RunContext, batch: dict[str, Any]) -> dict[str, LineResult]:
    found: dict[str, LineResult] = {}
    for key in ("output_file_id", "error_file_id"):
        file_id = batch.get(key)
        if not file_id:
            continue
        for raw in ctx.client.lines(str(file_id)):
            try:
                custom_id, result = read_result(raw)
            except (ValueError, KeyError, TypeError):
                continue  # an unreadable line leaves its request unfinished: sent again
            found[custom_id] = result
    return found


def _batch_errors(batch: dict[str, Any]) -> str:
    errors = (batch.get("errors") or {}).get("data") or []
    return "; ".join(str(e.get("message") or e.get("code")) for e in errors[:3]) or "no reason"


def collect(ctx: RunContext, plan: PlanState, batch: dict[str, Any]) -> None:
    """Write the records of ``plan``'s ended ``batch`` and deal with its unfinished lines."""
    status = str(batch["status"])
    results = _results(ctx, batch)
    cache_fill: list[tuple[str, list[float]]] = []
    unfinished: list[str] = []
    for custom_id in plan.custom_ids:
        item = ctx.items.pop(custom_id, None)
        if item is None:
            continue  # written already, or the input's line has changed since
        result = results.get(custom_id, LineResult(reason="no answer"))
        if result.vector is not None:
            ctx.records.vector(item, result.vector)
            ctx.summary.ok += 1
            ctx.summary.tokens += result.tokens
            cache_fill.append((item.text or "", result.vector))
        elif result.error is not None:
            error = f"line {item.line}: {result.error}"
            ctx.records.error(item, error)
            ctx.summary.failed += 1
            ctx.on_failed(item, error)
        else:
            ctx.items[custom_id] = item
            unfinished.append(custom_id)
    ctx.records.sync()
    if ctx.cache is not None and cache_fill:
        ctx.cache.put_many(ctx.model, cache_fill)
    if unfinished:
        _unfinished(ctx, plan, batch, unfinished)
    ctx.journal.finished(plan, status)
    _delete_files(ctx, batch)


def _unfinished(
    ctx: RunContext, plan: PlanState, batch: dict[str, Any], unfinished: list[str]
) -> None:
    status = str(batch["status"])
    # A line a later plan already holds (a run stopped mid-collect) is not sent a third time.
    elsewhere = {cid for p in ctx.journal.live() if p is not plan for cid in p.custom_ids}
    unfinished = [cid for cid in unfinished if cid not in elsewhere]
    if not unfinished:
        return
    why = f"batch {batch['id']} {status}"
    if status == "failed":
        why += f" ({_batch_errors(batch)})"
    if status == "cancelled":
        for cid in unfinished:
            ctx.items.pop(cid, None)
        ctx.summary.unfinished += len(unfinished)
        ctx.say(
            f"{why}: {len(unfinished)} of its {len(plan.custom_ids)} lines were not embedded "
            "and have no record yet; the same command, run again, submits them in a new batch"
        )
        return
    if plan.attempt >= ctx.settings.batch_max_attempts:
        for cid in unfinished:
            item = ctx.items.pop(cid)
            error = f"line {item.line}: not embedded after {plan.attempt} batches (last: {why})"
            ctx.records.error(item, error)
            ctx.summary.failed += 1
            ctx.on_failed(item, error)
        ctx.records.sync()
        return
    ctx.say(
        f"{why}: resubmitting its {len(unfinished)} unfinished lines of "
        f"{len(plan.custom_ids)} in a new batch (submission {plan.attempt + 1} of at most "
        f"{ctx.settings.batch_max_attempts})"
    )
    submit(ctx, unfinished, plan.attempt + 1)


def _delete_files(ctx: RunContext, batch: dict[str, Any]) -> None:
    # Tidiness only: the records are on disk, and the API expires files on its own.
    for key in ("input_file_id", "output_file_id", "error_file_id"):
        file_id = batch.get(key)
        if file_id:
            with contextlib.suppress(EmbeddingError):
                ctx.client.delete_file(str(file_id))
