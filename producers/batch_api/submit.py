"""Submitting: plan, journal, upload, journal, create, journal; and re-attaching on resume.

Every id is journaled the moment the API gives it, before anything else is awaited (see
producers/batch_api/journal.py), so a run stopped at any point never submits a batch twice.
"""

from __future__ import annotations

from producers.batch_api.context import RunContext
from producers.batch_api.journal import PlanState
from producers.batch_api.plan import plan_batches

__all__ = ["reattach", "submit"]


def submit(ctx: RunContext, custom_ids: list[str], attempt: int = 1) -> list[PlanState]:
    """Plan ``custom_ids`` into batches within the limits and submit each; the new plans."""
    texts = ((cid, ctx.items[cid].text or "") for cid in custom_ids)
    plans = []
    for planned in plan_batches(texts, ctx.body, ctx.limits):
        plan = ctx.journal.planned(planned.custom_ids, attempt)
        plans.append(plan)
        _upload_and_create(ctx, plan, planned.data)
        ctx.summary.submitted += len(planned.custom_ids)
        ctx.summary.resubmitted += len(planned.custom_ids) if attempt > 1 else 0
    return plans


def reattach(ctx: RunContext, plan: PlanState) -> None:
    """Bring a plan an earlier run left to having a batch, without submitting anything twice.

    With a batch id there is nothing to do. With a file but no batch id, the create may have
    reached the API before the run stopped: its batches are searched for that file first.
    Without a file, the upload never finished: the lines are uploaded again.
    """
    if plan.batch_id is not None:
        ctx.summary.reattached += 1
        return
    if plan.file_id is not None:
        found = ctx.client.find_by_input_file(plan.file_id)
        if found is not None:
            ctx.journal.created(plan, str(found["id"]))
            ctx.summary.reattached += 1
            return
        _create(ctx, plan, plan.file_id)
        return
    known = [cid for cid in plan.custom_ids if cid in ctx.items]
    if not known:
        # Every line is written already (another route?) or edited since: nothing to send.
        ctx.journal.finished(plan, "abandoned")
        return
    texts = ((cid, ctx.items[cid].text or "") for cid in known)
    # One plan was cut within the limits when first made, so it still fits in one file.
    for planned in plan_batches(texts, ctx.body, ctx.limits):
        _upload_and_create(ctx, plan, planned.data)
        ctx.summary.submitted += len(planned.custom_ids)


def _upload_and_create(ctx: RunContext, plan: PlanState, data: bytes) -> None:
    file_id = ctx.client.upload(f"embed-file-{plan.plan}.jsonl", data)
    ctx.journal.uploaded(plan, file_id)
    _create(ctx, plan, file_id)


def _create(ctx: RunContext, plan: PlanState, file_id: str) -> None:
    batch = ctx.client.create(file_id, {"embed_file_plan": plan.plan})
    ctx.journal.created(plan, str(batch["id"]))
    ctx.summary.batches_created += 1
    ctx.progress.batch(batch, len(plan.custom_ids))
