"""``embed-file``: embed every text of a file through the queue, with progress and resume.

::

    embed-file corpus.txt -o corpus.embeddings.jsonl            # one text per line
    embed-file docs.jsonl --field body --id-field doc_id         # JSONL, a chosen field
    embed-file faq.csv --column question                         # CSV, a chosen column

Each input record becomes one output line, written and flushed as soon as it finishes, so
the output's order is the finishing order, not the input's (each line names its id and line
number; resume keys on the id)::

    {"id": "doc-7", "line": 7, "embedding": [0.01, ...]}
    {"id": 8, "line": 8, "error": "line 8: not valid JSON (Expecting value)"}

``id`` is the record's id field (``--id-field``, default ``id``) or else its line number.
A bad record (empty text, bad JSON, missing field, too long, rejected by the API) gets an
error line and a report on stderr, and the rest go on. Run the same command again and it
resumes: ids already in the output are skipped (``--retry-failed`` re-tries error lines
and, at the end, rewrites the output keeping only the last line of each id). Texts go out
``--window`` at a time, so memory and the queue stay bounded; the broker is ``REDIS_URL``
or ``--redis-url``.
Each text's task id is derived from the input (path, line, text, model): a re-run collects
results already stored, and waits for tasks an interrupted run left queued (listed in
``OUTPUT.pending``) instead of paying for them again. Texts go in the **bulk** lane by
default, so a backfill never delays a web app's texts; ``--lane interactive`` when a user
waits for the file.
Exit status: 0 all embedded, 1 some records failed, 2 a usage, configuration or broker
error, 130 interrupted (see ``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from producers.lanes import LANE_BULK, LANES
from producers.records import (
    FORMATS,
    Item,
    UsageError,
    compact_output,
    count_records,
    guess_format,
    load_done,
    read_items,
    record_key,
)
from producers.sliding import (
    DEFAULT_STALL_WARNING_S,
    Outcome,
    PendingIds,
    QueueStats,
    QueueStream,
    TextStream,
    refill_size,
)
from worker.celery_ext.config import apply_config, with_redis_url
from worker.errors import (
    EmbeddingConfigError,
    EmbeddingError,
)
from worker.settings import Settings
from worker.validation import token_limit
from worker.vector_cache import VectorCache

__all__ = [
    "DEFAULT_WINDOW",
    "DEFAULT_WINDOW_TIMEOUT_S",
    "FORMATS",
    "Item",
    "Outcome",
    "PendingIds",
    "QueueStats",
    "Summary",
    "TextStream",
    "UsageError",
    "compact_output",
    "count_records",
    "embed_items",
    "guess_format",
    "load_done",
    "main",
    "read_items",
    "record_key",
    "task_id_for",
]

DEFAULT_WINDOW = 2000
"""Texts in flight. At least what the fleet reserves (workers × prefetch × concurrency: 4 ×
8 × 32 = 1,024): 500 kept four workers at 0.83 × four times one, 2,000 at 0.90 ×
(docs/benchmark.md, issue 16)."""
DEFAULT_WINDOW_TIMEOUT_S = 600.0
# Past this many, bad lines are only counted on stderr; every one is still in the output.
_MAX_REPORTED = 20


_TASK_ID_NAMESPACE = uuid.UUID("0b6f3c1e-6a52-4d0e-9a57-2f4d8c1b7e90")


def task_id_for(source: Path, line: int, text: str, model: str | None) -> str:
    """The task id of ``source``'s record at ``line``: the same on every run of that input.

    A uuid5 of the resolved path, the line number, the text's sha256 and the model, so a
    re-run finds the task an earlier run queued (or its stored result) instead of paying
    for the text again; an edited line gets a new id.
    """
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    name = f"{source.resolve()}\0{line}\0{digest}\0{model or ''}"
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, name))


@dataclass
class Summary:
    """What one run did; ``skipped`` counts records already in the output."""

    texts: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0  # of ``ok``, read from the vector cache instead of embedded
    elapsed_s: float = 0.0
    queue: QueueStats | None = None  # None when no queue was used (tests' fake streams)

    @property
    def texts_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Once:
    """Hands each position's outcome to ``finish`` once, however often it is told."""

    def __init__(self, items: list[Item], finish: Callable[[Item, Outcome], None]) -> None:
        self.items = items
        self.finish = finish
        self.done: set[int] = set()

    def __call__(self, position: int, outcome: Outcome) -> None:
        if position not in self.done:
            self.done.add(position)
            self.finish(self.items[position], outcome)


def embed_items(
    items: Iterable[Item],
    out: TextIO,
    stream: TextStream,
    *,
    skip: set[str],
    window: int = DEFAULT_WINDOW,
    timeout_s: float = DEFAULT_WINDOW_TIMEOUT_S,
    on_progress: Callable[[int], None] = lambda _: None,
    on_failed: Callable[[Item, str], None] = lambda _item, _error: None,
    task_id_of: Callable[[Item], str] | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Embed ``items`` with up to ``window`` texts in flight; write one JSON line each.

    ``stream`` is the queue (``producers.sliding.QueueStream``) and the window slides: texts
    go out ``refill_size(window)`` at a time, as soon as that many have finished, so the
    fleet never waits for a window's slowest text.

    Ids whose key is in ``skip`` are counted and left alone; a bad record gets its error
    line as it is read. A record is written and flushed as soon as its outcome is known,
    so the output's order is not the input's: each line carries its id and line number.
    An interrupted run loses nothing that finished. ``task_id_of`` gives each text's task
    id; ``summary``, when given, is filled in as the run goes (read it after an interrupt).
    Each text waits up to ``timeout_s`` seconds for its result once sent.
    """
    summary = summary if summary is not None else Summary()
    started = time.monotonic()
    refill = refill_size(window)

    def write(record: dict[str, Any]) -> None:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()

    def finish(item: Item, outcome: Outcome) -> None:
        on_progress(1)
        if isinstance(outcome, str):
            error = f"line {item.line}: {outcome}"
            write({"id": item.id, "line": item.line, "error": error})
            summary.failed += 1
            on_failed(item, error)
        else:
            write({"id": item.id, "line": item.line, "embedding": outcome})
            summary.ok += 1

    batch: list[Item] = []

    def send_batch() -> None:
        while stream.in_flight and stream.in_flight + len(batch) > window:
            stream.wait()
        texts = [item.text or "" for item in batch]
        ids = None if task_id_of is None else [task_id_of(item) for item in batch]
        stream.send(texts, timeout_s, _Once(list(batch), finish), task_ids=ids)
        batch.clear()

    try:
        for item in items:
            summary.texts += 1
            if record_key(item.id) in skip:
                summary.skipped += 1
                on_progress(1)
            elif item.text is None:
                write({"id": item.id, "line": item.line, "error": item.error})
                summary.failed += 1
                on_failed(item, item.error or "")
                on_progress(1)
            else:
                batch.append(item)
                if len(batch) >= refill:
                    send_batch()
        if batch:
            send_batch()
        while stream.in_flight:
            stream.wait()
    finally:
        try:
            stream.close()
        finally:
            summary.elapsed_s = time.monotonic() - started
    return summary


def _project_app() -> Celery:
    from worker.celery_app import app

    return app


EXIT_CODES = """\
exit status:
  0    every record embedded
  1    some records failed (each has an error line in the output; --retry-failed re-tries)
  2    usage, configuration or broker error (nothing more was written)
  130  interrupted (Ctrl-C): what finished is written; a re-run collects what is in flight
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless it has none (``None``) or is a flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embed-file",
        description="Embed every text of a file through the queue, as JSONL with resume.",
        epilog=EXIT_CODES,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("input", type=Path, help="the file to embed")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="JSONL to write or resume (default INPUT.embeddings.jsonl)",
    )
    parser.add_argument("--format", choices=FORMATS, help="default: from the input's extension")
    parser.add_argument("--field", default="text", help="JSONL field with the text")
    parser.add_argument("--column", help="CSV column with the text (default: --field)")
    parser.add_argument("--id-field", default="id", help="JSONL field or CSV column of ids")
    parser.add_argument("--model", help="embedding model (default: the worker's)")
    parser.add_argument(
        "--lane",
        choices=LANES,
        default=LANE_BULK,
        help="the queue's lane: bulk waits behind the web apps' interactive texts, so a "
        "backfill never delays them; interactive when a user waits for this file",
    )
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="texts in flight")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WINDOW_TIMEOUT_S,
        help="seconds each text waits for its result once enqueued",
    )
    parser.add_argument(
        "--stall-warning",
        type=float,
        default=DEFAULT_STALL_WARNING_S,
        help="warn after this many seconds without a result",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-try ids with errors; their error lines are replaced",
    )
    parser.add_argument("--redis-url", help="broker and results (default REDIS_URL)")
    batch = parser.add_argument_group(
        "Batch API (docs/batch-api.md)",
        "half the price, within 24 hours, without the queue or a worker; --lane, --window, "
        "--timeout, --stall-warning and --redis-url do not apply",
    )
    batch.add_argument(
        "--batch-api",
        action="store_true",
        help="embed through OpenAI's Batch API; a re-run re-attaches to the batches "
        "submitted (ids in OUTPUT.batches) and submits nothing twice",
    )
    batch.add_argument(
        "--cancel",
        action="store_true",
        help="with --batch-api: cancel the batches submitted for OUTPUT and write what they "
        "embedded; a later run submits the rest",
    )
    batch.add_argument(
        "--poll-interval",
        type=float,
        help="with --batch-api: seconds between polls (default "
        "EMBEDDINGS_BATCH_POLL_INTERVAL_S, 30)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _summary_table(summary: Summary, output: Path) -> Table:
    table = Table(title=f"embed-file → {output}")
    table.add_column("texts", justify="right")
    table.add_column("ok", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("skipped", justify="right")
    table.add_column("from cache", justify="right")
    table.add_column("texts/s", justify="right")
    table.add_column("enqueued/s", justify="right")
    table.add_column("collected/s", justify="right")
    queue = summary.queue
    table.add_row(
        str(summary.texts),
        str(summary.ok),
        str(summary.failed),
        str(summary.skipped),
        str(summary.cached),
        f"{summary.texts_per_s:.1f}",
        f"{queue.enqueue_per_s:.0f}" if queue and queue.enqueued else "—",
        f"{queue.collect_per_s:.1f}" if queue and queue.collected else "—",
    )
    return table


def _batch_api(
    args: argparse.Namespace, console: Console, fmt: str, field: str, output: Path
) -> int:
    if not args.batch_api:
        console.print("--cancel and --poll-interval go with --batch-api", style="red")
        return 2
    from producers.batch_api import BatchRunOptions, run_batch_api

    options = BatchRunOptions(
        source=args.input,
        output=output,
        fmt=fmt,
        field=field,
        id_field=args.id_field,
        model=args.model,
        retry_failed=args.retry_failed,
        cancel=args.cancel,
        show_progress=not args.no_progress,
        poll_interval_s=args.poll_interval,
    )
    return run_batch_api(options, console)


def main(argv: Sequence[str] | None = None, stream: TextStream | None = None) -> int:
    """Run ``embed-file``; ``stream`` replaces the queue (tests)."""
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    if args.window < 1 or args.timeout <= 0 or args.stall_warning <= 0:
        console.print("--window, --timeout and --stall-warning must be positive", style="red")
        return 2
    if not args.input.is_file():
        console.print(f"no such file: {args.input}", style="red", markup=False)
        return 2
    fmt = args.format or guess_format(args.input)
    field = (args.column or args.field) if fmt == "csv" else args.field
    output: Path = args.output or args.input.with_name(args.input.name + ".embeddings.jsonl")
    if args.batch_api or args.cancel or args.poll_interval is not None:
        return _batch_api(args, console, fmt, field, output)
    cached = [0]
    queue_stats: QueueStats | None = None
    task_id_of: Callable[[Item], str] | None = None
    in_flight: PendingIds | None = None
    summary = Summary()
    try:
        settings = Settings.from_env()
        if stream is None:
            app = _project_app()
            if args.redis_url:
                # The whole Celery configuration again, for the new URL: a rediss:// URL gets
                # verified TLS, a Redis URL the project's result backend and transport.
                settings = with_redis_url(settings, args.redis_url)
                apply_config(app, settings)
            cache = (
                VectorCache.from_url(settings.cache_url, settings) if settings.cache_url else None
            )

            def count_cached(hits: int) -> None:
                cached[0] += hits

            def warn(message: str) -> None:
                console.print(message, style="yellow", markup=False, highlight=False)

            def stalled(idle_s: float) -> None:
                warn(
                    f"warning: no result for {idle_s:.0f}s; is a worker consuming the queue? "
                    "(Ctrl-C stops; a re-run collects what is in flight)"
                )

            queue_stats = QueueStats()
            in_flight = PendingIds(output.with_name(output.name + ".pending"))
            # On Redis a send is enqueued in round trips of ENQUEUE_CHUNK_SIZE texts and results
            # are read as they are published, on one subscription, then deleted once written.
            stream = QueueStream(
                app,
                args.model,
                cache=cache,
                on_cached=count_cached,
                stats=queue_stats,
                pending=in_flight,
                on_stall=stalled,
                stall_s=args.stall_warning,
                on_no_worker=warn,
                lane=args.lane,
            )
            source: Path = args.input
            model: str | None = args.model

            def task_id_of(item: Item) -> str:
                return task_id_for(source, item.line, item.text or "", model)

    except EmbeddingConfigError as exc:
        console.print(f"bad configuration: {exc}", style="red", markup=False)
        return 2

    embedded, failed_only = load_done(output)
    skip = embedded if args.retry_failed else embedded | failed_only
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.no_progress,
    )
    reported = 0

    def on_failed(_item: Item, error: str) -> None:
        nonlocal reported
        reported += 1
        if reported <= _MAX_REPORTED:
            progress.console.print(error, style="yellow", markup=False, highlight=False)

    try:
        total = count_records(args.input, fmt)
        items = read_items(
            args.input,
            fmt,
            field=field,
            id_field=args.id_field,
            max_chars=settings.max_text_chars,
            tokens=token_limit(settings, args.model),
        )
        with progress, open(output, "a", encoding="utf-8") as out:
            bar = progress.add_task(f"embedding {args.input.name}", total=total)
            embed_items(
                items,
                out,
                stream,
                skip=skip,
                window=args.window,
                timeout_s=args.timeout,
                on_progress=lambda n: progress.advance(bar, n),
                on_failed=on_failed,
                task_id_of=task_id_of,
                summary=summary,
            )
    except UsageError as exc:
        console.print(str(exc), style="red", markup=False)
        return 2
    except KeyboardInterrupt:
        if args.retry_failed and failed_only:
            compact_output(output)
        waiting = len(in_flight) if in_flight is not None else 0
        console.print(
            f"interrupted: {summary.ok + summary.failed} records written this run, all saved; "
            f"{waiting} texts still in flight. Re-run the same command: it collects them "
            "without enqueueing them again, and resumes.",
            style="red",
            markup=False,
        )
        return 130
    except (EmbeddingError, RedisError, OperationalError) as exc:
        # Finished windows are on disk; the same command picks up from there.
        console.print(
            f"stopped: {exc}; re-run the same command to resume", style="red", markup=False
        )
        return 2
    if reported > _MAX_REPORTED:
        console.print(f"… and {reported - _MAX_REPORTED} more failed records, all in {output}")
    if args.retry_failed and failed_only:
        compact_output(output)
    summary.cached = cached[0]
    summary.queue = queue_stats
    console.print(_summary_table(summary, output))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
