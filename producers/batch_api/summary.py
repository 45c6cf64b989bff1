"""The closing table: records, what was submitted, tokens and the price at both rates."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from producers.batch_api.context import BatchSummary
from worker.settings import Settings

__all__ = ["costs", "summary_table"]


def costs(settings: Settings, model: str, tokens: int) -> tuple[float, float] | None:
    """``(online, batch)`` US dollars for ``tokens`` of ``model``; None if it has no price."""
    prices = settings.prices_for(model)
    if prices is None:
        return None
    online, batch = prices
    return tokens * online / 1e6, tokens * batch / 1e6


def _dollars(amount: float) -> str:
    return f"${amount:.6f}" if amount < 1 else f"${amount:,.2f}"


def summary_table(summary: BatchSummary, output: Path, settings: Settings, model: str) -> Table:
    """One row per figure, so it fits a narrow terminal."""
    table = Table(title=f"embed-file --batch-api → {output.name}", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    batches = f"{summary.batches_created} new"
    if summary.reattached:
        batches += f", {summary.reattached} re-attached"
    rows = [
        ("texts", str(summary.texts)),
        ("ok", str(summary.ok)),
        ("failed", str(summary.failed)),
        ("skipped (done before)", str(summary.skipped)),
        ("from cache", str(summary.cached)),
        ("submitted", f"{summary.submitted} ({summary.resubmitted} resubmitted)"),
        ("batches", batches),
        ("tokens (usage)", str(summary.tokens)),
    ]
    if summary.unfinished:
        rows.append(("not embedded (cancelled)", str(summary.unfinished)))
    priced = costs(settings, model, summary.tokens)
    if priced is None:
        rows.append(("price", f"{model} is not in EMBEDDINGS_PRICE_TABLE"))
    else:
        online, batch = priced
        rows.append(("price online", _dollars(online)))
        rows.append(("price batch", f"{_dollars(batch)} (saved {_dollars(online - batch)})"))
    rows.append(("elapsed", f"{summary.elapsed_s:.1f}s, {summary.texts_per_s:.1f} lines/s"))
    for name, value in rows:
        table.add_row(name, value)
    return table
