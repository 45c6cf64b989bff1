"""``embed-file INPUT -o OUTPUT --batch-api``: the whole run, from reading to the summary.

Reads the input as the online route does and skips what the output already holds. Lines in
a batch an earlier run submitted are re-attached to, never submitted again; lines in the
vector cache are written from it; the rest are planned into batches, submitted, and polled
every ``--poll-interval`` seconds until each batch ends and its records are written. The
API key and base URL are checked with one call before anything is uploaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console

from producers.batch_api.client import BatchClient
from producers.batch_api.collect import TERMINAL, collect
from producers.batch_api.context import BatchSummary, Records, RunContext
from producers.batch_api.journal import Journal, journal_path
from producers.batch_api.plan import BatchLimits, custom_id_for, request_body
from producers.batch_api.progress import BatchProgress
from producers.batch_api.submit import reattach, submit
from producers.batch_api.summary import summary_table
from producers.records import (
    Item,
    UsageError,
    compact_output,
    count_records,
    load_done,
    read_items,
    record_key,
)
from worker.errors import (
    EmbeddingAPIError,
    EmbeddingConfigError,
    EmbeddingError,
    EmbeddingRetryableError,
)
from worker.settings import Settings
from worker.vector_cache import VectorCache

__all__ = ["BatchRunOptions", "run_batch_api"]

# Past this many, bad lines are only counted on stderr; every one is still in the output.
_MAX_REPORTED = 20
_CACHE_CHUNK = 1000


@dataclass(frozen=True)
class BatchRunOptions:
    """The command line of one ``--batch-api`` run."""

    source: Path
    output: Path
    fmt: str
    field: str
    id_field: str
    model: str | None = None
    retry_failed: bool = False
    cancel: bool = False
    show_progress: bool = True
    poll_interval_s: float | None = None  # None: EMBEDDINGS_BATCH_POLL_INTERVAL_S


def run_batch_api(
    options: BatchRunOptions,
    console: Console,
    *,
    environ: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Run it; the exit status (0, 1 some records failed, 2 cannot start, 130 interrupted).

    ``environ``, ``sleep`` and ``transport`` replace the environment, the waits between
    polls and retries, and the HTTP transport (tests).
    """

    def error(message: str) -> int:
        console.print(message, style="red", markup=False, highlight=False)
        return 2

    try:
        settings = Settings.from_env(environ)
    except EmbeddingConfigError as exc:
        return error(f"bad configuration: {exc}")
    poll_s = options.poll_interval_s or settings.batch_poll_interval_s
    if poll_s <= 0:
        return error("--poll-interval must be positive")
    if not settings.api_key:
        return error("no API key: the Batch API needs EMBEDDINGS_API_KEY (or OPENAI_API_KEY)")
    client = BatchClient(
        settings.base_url,
        settings.api_key,
        timeout_s=settings.timeout_s,
        max_retries=settings.max_retries,
        initial_backoff_s=settings.initial_backoff_s,
        max_backoff_s=settings.max_backoff_s,
        transport=transport,
        sleep=sleep,
    )
    journal = Journal(journal_path(options.output))
    with client:
        try:
            client.check_access()
        except EmbeddingAPIError as exc:
            if exc.status_code in (401, 403):
                return error(f"the API refused the key ({exc.status_code}): {exc.api_message}")
            return error(f"the Batch API at {settings.base_url} cannot be used: {exc}")
        except EmbeddingError as exc:
            return error(f"could not reach the Batch API at {settings.base_url}: {exc}")
        return _run(options, console, settings, client, journal, poll_s, sleep)


def _run(
    options: BatchRunOptions,
    console: Console,
    settings: Settings,
    client: BatchClient,
    journal: Journal,
    poll_s: float,
    sleep: Callable[[float], None],
) -> int:
    started = time.monotonic()
    model = options.model or settings.model
    embedded, failed_only = load_done(options.output)
    skip = embedded if options.retry_failed else embedded | failed_only
    try:
        total = count_records(options.source, options.fmt)
        items = read_items(
            options.source,
            options.fmt,
            field=options.field,
            id_field=options.id_field,
            max_chars=settings.max_text_chars,
        )
    except UsageError as exc:
        console.print(str(exc), style="red", markup=False)
        return 2
    progress = BatchProgress(
        console,
        disable=not options.show_progress,
        label=f"embedding {options.source.name}",
        total=total,
    )
    reported = 0

    def on_failed(_item: Item, message: str) -> None:
        nonlocal reported
        reported += 1
        if reported <= _MAX_REPORTED:
            progress.print(message, style="yellow")

    cache = VectorCache.from_url(settings.cache_url, settings) if settings.cache_url else None
    summary = BatchSummary()
    cancel_failed = False
    try:
        with progress, open(options.output, "a", encoding="utf-8") as out:
            ctx = RunContext(
                client=client,
                journal=journal,
                settings=settings,
                model=model,
                body=request_body(settings, model),
                limits=BatchLimits.from_settings(settings),
                records=Records(out, progress.line_done),
                progress=progress,
                say=lambda message: progress.print(message, style="yellow"),
                cache=cache,
                summary=summary,
                on_failed=on_failed,
            )
            fresh = _read(ctx, items, skip, failed_only, options.retry_failed)
            if options.cancel:
                cancel_failed = _cancel(ctx)
            else:
                for plan in journal.live():
                    reattach(ctx, plan)
                if fresh:
                    submit(ctx, fresh)
            _poll(ctx, poll_s, sleep)
    except UsageError as exc:
        console.print(str(exc), style="red", markup=False)
        return 2
    except KeyboardInterrupt:
        if options.retry_failed and failed_only:
            compact_output(options.output)
        running = sum(1 for plan in journal.live() if plan.batch_id or plan.file_id)
        console.print(
            f"interrupted: {summary.ok + summary.failed} records written this run, all saved; "
            f"{running} batches still at the API (ids in {journal.path.name}). Re-run the same "
            "command: it re-attaches to them and submits nothing twice (--cancel cancels them).",
            style="red",
            markup=False,
        )
        return 130
    except EmbeddingError as exc:
        console.print(
            f"stopped: {exc}; re-run the same command to resume", style="red", markup=False
        )
        return 2
    finally:
        summary.elapsed_s = time.monotonic() - started
        if cache is not None:
            cache.close()
    if reported > _MAX_REPORTED:
        console.print(f"… and {reported - _MAX_REPORTED} more failed records, all in the output")
    if options.retry_failed and failed_only:
        compact_output(options.output)
    journal.remove_if_done()
    console.print(summary_table(summary, options.output, settings, model))
    if options.cancel:
        return 1 if cancel_failed else 0
    return 1 if summary.failed or summary.unfinished else 0


def _read(
    ctx: RunContext,
    items: Iterable[Item],
    skip: set[str],
    failed_only: set[str],
    retry_failed: bool,
) -> list[str]:
    """Sort the input: skipped, bad, in flight, from the cache; the custom ids to submit."""
    in_flight = {cid for plan in ctx.journal.live() for cid in plan.custom_ids}
    summary = ctx.summary
    fresh: list[str] = []
    retried = 0
    for item in items:
        summary.texts += 1
        key = record_key(item.id)
        if key in skip:
            summary.skipped += 1
            ctx.progress.line_done()
        elif item.text is None:
            ctx.records.error(item, item.error or "")
            summary.failed += 1
            ctx.on_failed(item, item.error or "")
        else:
            custom_id = custom_id_for(item.line, item.text)
            ctx.items[custom_id] = item
            if custom_id not in in_flight:
                fresh.append(custom_id)
                retried += key in failed_only
    if retry_failed and retried:
        ctx.say(
            f"--retry-failed: {retried} lines with errors go in a new batch, through the Batch "
            "API (run without --batch-api to retry them online)"
        )
    return _from_cache(ctx, fresh)


def _from_cache(ctx: RunContext, fresh: list[str]) -> list[str]:
    if ctx.cache is None:
        return fresh
    missing: list[str] = []
    for start in range(0, len(fresh), _CACHE_CHUNK):
        chunk = fresh[start : start + _CACHE_CHUNK]
        texts = [ctx.items[cid].text or "" for cid in chunk]
        for custom_id, vector in zip(chunk, ctx.cache.get_many(ctx.model, texts), strict=True):
            if vector is None:
                missing.append(custom_id)
            else:
                ctx.records.vector(ctx.items.pop(custom_id), vector)
                ctx.summary.ok += 1
                ctx.summary.cached += 1
    return missing


def _poll(ctx: RunContext, poll_s: float, sleep: Callable[[float], None]) -> None:
    """Poll every live batch until each has ended and been collected."""
    while True:
        live = [plan for plan in ctx.journal.live() if plan.batch_id]
        if not live:
            return
        for plan in live:
            assert plan.batch_id is not None
            try:
                batch = ctx.client.retrieve(plan.batch_id)
            except EmbeddingRetryableError as exc:
                ctx.say(f"warning: could not poll {plan.batch_id} ({exc}); trying again")
                continue
            ctx.progress.batch(batch, len(plan.custom_ids))
            if batch.get("status") in TERMINAL:
                collect(ctx, plan, batch)
        if any(plan.batch_id for plan in ctx.journal.live()):
            sleep(poll_s)


def _cancel(ctx: RunContext) -> bool:
    """Cancel this output's live batches; whether a cancel failed. The poll that follows
    writes what they embedded; their other lines are left for a later run to submit."""
    live = ctx.journal.live()
    if not live:
        ctx.say(f"nothing to cancel: {ctx.journal.path.name} lists no running batch")
    failed = False
    for plan in live:
        if plan.batch_id is None and plan.file_id is not None:
            found = ctx.client.find_by_input_file(plan.file_id)
            if found is not None:
                ctx.journal.created(plan, str(found["id"]))
        if plan.batch_id is None:
            ctx.journal.finished(plan, "never submitted")  # nothing runs at the API
            continue
        try:
            batch = ctx.client.cancel(plan.batch_id)
        except EmbeddingError as exc:
            ctx.say(f"batch {plan.batch_id}: not cancelled: {exc}")
            failed = True
            continue
        ctx.say(f"batch {plan.batch_id}: {batch.get('status')}")
    return failed
