"""``embed-file``'s records: reading the input file, and the output file a re-run resumes from.

The input is one text per line, JSONL (a chosen field) or CSV (a chosen column). Each
record is checked as the API would check it; a bad one becomes an ``Item`` with an error,
so the rest go on. The output is JSONL, one line per finished record; ``load_done`` reads
back which ids are done, and ``compact_output`` keeps only the last line of each id.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from worker.errors import EmbeddingInputError
from worker.validation import TokenLimit, validate_text

__all__ = [
    "FORMATS",
    "Item",
    "UsageError",
    "compact_output",
    "count_records",
    "guess_format",
    "load_done",
    "read_items",
    "record_key",
]

FORMATS = ("lines", "jsonl", "csv")


class UsageError(Exception):
    """The command cannot start (bad arguments, a missing CSV column): exit status 2."""


@dataclass(frozen=True)
class Item:
    """One input record: its 1-based line, its id, and its text or why it has none."""

    line: int
    id: Any
    text: str | None = None
    error: str | None = None


def guess_format(path: Path) -> str:
    """``jsonl`` for .jsonl/.ndjson, ``csv`` for .csv, else ``lines``."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "csv" if suffix == ".csv" else "lines"


def record_key(record_id: Any) -> str:
    """The id as compared on resume, so ``7`` and ``"7"`` stay different ids."""
    return json.dumps(record_id, sort_keys=True, ensure_ascii=False)


def _open(path: Path) -> TextIO:
    # Undecodable bytes become lone surrogates, which validation reports as a bad line.
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


@dataclass(frozen=True)
class _Limits:
    max_chars: int
    tokens: TokenLimit | None


def _checked(line: int, record_id: Any, text: object, limits: _Limits) -> Item:
    try:
        checked = validate_text(text, max_chars=limits.max_chars, tokens=limits.tokens)
        return Item(line, record_id, text=checked)
    except (EmbeddingInputError, TypeError) as exc:
        return Item(line, record_id, error=f"line {line}: {exc}")


def _scalar_id(value: Any, line: int) -> Any:
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else line


def _read_lines(f: TextIO, limits: _Limits) -> Iterator[Item]:
    for n, raw in enumerate(f, start=1):
        yield _checked(n, n, raw.rstrip("\r\n"), limits)


def _read_jsonl(f: TextIO, field: str, id_field: str, limits: _Limits) -> Iterator[Item]:
    for n, raw in enumerate(f, start=1):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield Item(n, n, error=f"line {n}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            yield Item(n, n, error=f"line {n}: not a JSON object")
            continue
        record_id = _scalar_id(obj.get(id_field), n)
        if field not in obj:
            yield Item(n, record_id, error=f"line {n}: no field {field!r}")
            continue
        yield _checked(n, record_id, obj[field], limits)


def _read_csv(f: TextIO, column: str, id_column: str, limits: _Limits) -> Iterator[Item]:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        return
    if column not in header:
        raise UsageError(f"no column {column!r} in the CSV header {header!r}")
    text_at = header.index(column)
    id_at = header.index(id_column) if id_column in header else None
    last = reader.line_num
    for row in reader:
        # A quoted field may span lines: a record starts on the line after the previous one.
        start, last = last + 1, reader.line_num
        if not row:
            continue
        record_id: Any = row[id_at] if id_at is not None and id_at < len(row) else start
        if text_at >= len(row):
            yield Item(start, record_id, error=f"line {start}: no value for column {column!r}")
            continue
        yield _checked(start, record_id, row[text_at], limits)


def read_items(
    path: Path,
    fmt: str,
    *,
    field: str = "text",
    id_field: str = "id",
    max_chars: int,
    tokens: TokenLimit | None = None,
) -> Iterator[Item]:
    """Yield ``path``'s records one at a time, each checked as the API would check it.

    ``field`` is the JSONL field or CSV column holding the text; ``id_field`` the one holding
    the id (the line number when absent). A text over ``max_chars`` characters or over
    ``tokens`` (``worker.validation.token_limit``) is an ``Item`` with an error naming its
    count and the limit; the records after it go on.
    """
    limits = _Limits(max_chars, tokens)
    with _open(path) as f:
        if fmt == "lines":
            yield from _read_lines(f, limits)
        elif fmt == "jsonl":
            yield from _read_jsonl(f, field, id_field, limits)
        elif fmt == "csv":
            yield from _read_csv(f, field, id_field, limits)
        else:
            raise UsageError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def count_records(path: Path, fmt: str) -> int:
    """How many records ``read_items`` will yield, for the progress bar (one cheap pass)."""
    with _open(path) as f:
        if fmt != "csv":
            return sum(1 for _ in f)
        return max(sum(1 for row in csv.reader(f) if row) - 1, 0)


def load_done(path: Path) -> tuple[set[str], set[str]]:
    """Keys of the ids already in the output: ``(embedded, failed_only)``.

    A last line cut short by a crash is removed, so appending starts on a fresh line and the
    record is embedded again.
    """
    if not path.exists():
        return set(), set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    embedded: set[str] = set()
    failed: set[str] = set()
    for raw in data.splitlines():
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "id" not in record:
            continue
        key = record_key(record["id"])
        if "embedding" in record:
            embedded.add(key)
        else:
            failed.add(key)
    return embedded, failed - embedded


def compact_output(path: Path) -> int:
    """Keep only the last record of each id in ``path`` (rewritten atomically); how many went.

    Used after ``--retry-failed``, so a retried line's earlier error record is replaced, not
    kept beside its new record.
    """
    if not path.exists():
        return 0
    last: dict[str, bytes] = {}
    other: list[bytes] = []
    lines = path.read_bytes().splitlines()
    for raw in lines:
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            other.append(raw)
            continue
        if not isinstance(record, dict) or "id" not in record:
            other.append(raw)
            continue
        key = record_key(record["id"])
        last.pop(key, None)  # re-inserted: the dict keeps the order of last occurrences
        last[key] = raw
    kept = [*other, *last.values()]
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(path.name + ".compact")
    tmp.write_bytes(b"".join(raw + b"\n" for raw in kept))
    os.replace(tmp, path)
    return len(lines) - len(kept)
