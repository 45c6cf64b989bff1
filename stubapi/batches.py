"""The stub's ``/v1/batches``: OpenAI's Batch API for ``/v1/embeddings``, offline and fast.

A batch moves validating → in_progress → finalizing → completed over ``delay_s`` seconds
(a tenth, eight tenths, a tenth), read from the settings at every look, so a test can hold
batches with a long delay and release them by setting it to 0. A look is any retrieve or
list: there is no background thread, so a stub nobody polls does no work.

As OpenAI's does, a batch fails validation when a line is not a request for the batch's
endpoint, when it holds more than ``max_requests`` requests or, for embeddings, more than
``max_inputs`` inputs across them. Each request is answered as ``/v1/embeddings`` would
answer it (the same vectors, ``usage`` with tokens): a 400 (the stub's reject marker, an
empty input) goes to the error file, the rest to the output file, both shuffled. A batch can
be made to expire (the unfinished requests get ``batch_expired`` errors) or fail, through
``force`` (``POST /_stub/batches``), and ``cancel`` leaves the requests done so far answered.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from stubapi.faults import StubConfig
from stubapi.files import FileStore
from stubapi.vectors import (
    RequestError,
    embeddings_response,
    input_tokens,
    parse_embeddings_request,
)

__all__ = [
    "BATCH_ENDPOINT",
    "BatchConfig",
    "BatchStore",
    "Forced",
    "StubBatch",
]

BATCH_ENDPOINT = "/v1/embeddings"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_REQUESTS = 50_000
MAX_INPUTS = 50_000
COMPLETION_WINDOW_S = 86_400
OUTCOMES = ("expired", "failed")
_VALIDATING, _IN_PROGRESS, _FINALIZING = 0.1, 0.9, 1.0  # fractions of delay_s
_CONFIG_FIELDS = {"delay_s", "max_requests", "max_inputs"}


@dataclass(frozen=True)
class BatchConfig:
    """``delay_s`` (seconds a batch takes, default 0.5) and the per-batch limits."""

    delay_s: float = 0.5
    max_requests: int = MAX_REQUESTS
    max_inputs: int = MAX_INPUTS

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay_s) and self.delay_s >= 0):
            raise ValueError("delay_s must be a finite number >= 0")
        if self.max_requests < 1 or self.max_inputs < 1:
            raise ValueError("max_requests and max_inputs must be >= 1")


@dataclass(frozen=True)
class Forced:
    """The outcome forced on the next batch created: ``expired`` (with ``completed_fraction``
    of its requests answered) or ``failed``."""

    outcome: str
    completed_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        if not 0.0 <= self.completed_fraction <= 1.0:
            raise ValueError("completed_fraction must be in [0, 1]")


@dataclass
class StubBatch:
    """One batch's state; ``public()`` is what the API shows of it."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    started: float  # the store's clock
    created_at: int  # Unix seconds
    forced: Forced | None
    status: str = "validating"
    stamps: dict[str, int] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    completed: int = 0
    failed: int = 0
    done_at_cancel: int = 0
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    tokens: int = 0

    def public(self) -> dict[str, Any]:
        stamps = {
            f"{name}_at": self.stamps.get(name)
            for name in (
                "in_progress",
                "finalizing",
                "completed",
                "failed",
                "expired",
                "cancelling",
                "cancelled",
            )
        }
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + COMPLETION_WINDOW_S,
            **stamps,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
            "usage": {
                "input_tokens": self.tokens,
                "output_tokens": 0,
                "total_tokens": self.tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }


class BatchStore:
    """Batches by id, advanced on every look; ``clock`` (monotonic seconds) for tests."""

    def __init__(
        self,
        files: FileStore,
        embed_config: Callable[[], StubConfig],
        config: BatchConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = files
        self._embed_config = embed_config
        self.initial = self.config = config or BatchConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._batches: dict[str, StubBatch] = {}
        self._forced: deque[Forced] = deque()
        self.created = 0
        self.cancels = 0

    def configure(self, changes: dict[str, Any]) -> BatchConfig:
        unknown = set(changes) - _CONFIG_FIELDS
        if unknown:
            raise ValueError(f"unknown batch setting(s): {', '.join(sorted(unknown))}")
        with self._lock:
            self.config = replace(self.config, **changes)
            return self.config

    def force(self, forced: Forced) -> None:
        """Give the next batch created ``forced``'s outcome (a FIFO, one per batch)."""
        with self._lock:
            self._forced.append(forced)

    def reset(self) -> None:
        with self._lock:
            self._batches.clear()
            self._forced.clear()
            self.config = self.initial
            self.created = self.cancels = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            requests = sum(b.total for b in self._batches.values())
            statuses = [b.status for b in self._batches.values()]
            return {
                "files_uploaded": self.files.uploads,
                "batches_created": self.created,
                "batch_requests": requests,
                "cancel_calls": self.cancels,
                "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
                "config": {
                    "delay_s": self.config.delay_s,
                    "max_requests": self.config.max_requests,
                    "max_inputs": self.config.max_inputs,
                },
                "forced": [f.outcome for f in self._forced],
            }

    def create(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> StubBatch:
        with self._lock:
            batch = StubBatch(
                id=f"batch_{uuid.uuid4().hex[:24]}",
                input_file_id=input_file_id,
                endpoint=endpoint,
                completion_window=completion_window,
                metadata=metadata,
                started=self._clock(),
                created_at=int(time.time()),
                forced=self._forced.popleft() if self._forced else None,
            )
            self._batches[batch.id] = batch
            self.created += 1
            return batch

    def get(self, batch_id: str) -> StubBatch | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is not None:
                self._advance(batch)
            return batch

    def newest_first(self) -> list[StubBatch]:
        with self._lock:
            batches = sorted(self._batches.values(), key=lambda b: b.started, reverse=True)
            for batch in batches:
                self._advance(batch)
            return batches

    def cancel(self, batch_id: str) -> StubBatch | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            self._advance(batch)
            self.cancels += 1
            if batch.status == "validating":
                self._validate(batch)  # so its requests get their batch_cancelled lines
            if batch.status not in TERMINAL and batch.status != "cancelling":
                batch.done_at_cancel = batch.completed
                self._enter(batch, "cancelling")
            return batch

    # Called with the lock held.
    def _advance(self, batch: StubBatch) -> None:
        elapsed = self._clock() - batch.started
        delay = self.config.delay_s
        if batch.status == "cancelling":
            self._finish(batch, "cancelled", batch.done_at_cancel)
        if batch.status == "validating" and elapsed >= _VALIDATING * delay:
            self._validate(batch)
        if batch.status == "in_progress":
            span = (_IN_PROGRESS - _VALIDATING) * delay
            share = 1.0 if span <= 0 else min(1.0, (elapsed - _VALIDATING * delay) / span)
            batch.completed = int(share * batch.total)
            if elapsed >= _IN_PROGRESS * delay:
                self._enter(batch, "finalizing")
        if batch.status == "finalizing" and elapsed >= _FINALIZING * delay:
            forced = batch.forced
            if forced is not None and forced.outcome == "expired":
                done = math.floor(forced.completed_fraction * batch.total)
                self._finish(batch, "expired", done)
            else:
                self._finish(batch, "completed", batch.total)

    def _enter(self, batch: StubBatch, status: str) -> None:
        batch.status = status
        batch.stamps[status] = int(time.time())

    def _fail(self, batch: StubBatch, code: str, message: str, line: int | None = None) -> None:
        batch.errors = [{"code": code, "message": message, "param": None, "line": line}]
        self._enter(batch, "failed")

    def _validate(self, batch: StubBatch) -> None:
        stored = self.files.get(batch.input_file_id)
        if stored is None:
            self._fail(batch, "invalid_file", f"No file with id {batch.input_file_id}.")
            return
        if batch.forced is not None and batch.forced.outcome == "failed":
            self._fail(batch, "stub_forced_failure", "The stub was told to fail this batch.")
            return
        requests: list[dict[str, Any]] = []
        seen: set[str] = set()
        inputs = 0
        for number, raw in enumerate(stored.data.splitlines(), start=1):
            if not raw.strip():
                continue
            problem = _request_problem(raw, batch.endpoint, seen)
            if isinstance(problem, str):
                self._fail(batch, "invalid_request", problem, number)
                return
            requests.append(problem)
            body_input = problem["body"].get("input")
            inputs += len(body_input) if isinstance(body_input, list) else 1
        config = self.config
        if len(requests) > config.max_requests:
            message = f"The input file has {len(requests)} requests; at most {config.max_requests}."
            self._fail(batch, "too_many_requests", message)
        elif inputs > config.max_inputs:
            message = (
                f"A batch for {BATCH_ENDPOINT} holds at most {config.max_inputs} embedding "
                f"inputs across all its requests; this one has {inputs}."
            )
            self._fail(batch, "too_many_inputs", message)
        elif not requests:
            self._fail(batch, "empty_file", "The input file has no requests.")
        else:
            batch.requests, batch.total = requests, len(requests)
            self._enter(batch, "in_progress")

    def _finish(self, batch: StubBatch, status: str, done: int) -> None:
        order = list(range(batch.total))
        rng = random.Random(batch.id)
        rng.shuffle(order)
        answered = set(order[:done])
        output: list[str] = []
        errors: list[str] = []
        embed = self._embed_config()
        for position, request in enumerate(batch.requests):
            # Ids from the batch's and the request's position: uuid4 per line cost a tenth
            # of a 50,000-line batch's time.
            request_id = f"{batch.id[6:]}_{position}"
            if position in answered:
                line, ok, tokens = _answer(request, embed, request_id)
                (output if ok else errors).append(line)
                batch.tokens += tokens
            else:
                errors.append(_unfinished(request["custom_id"], status, request_id))
        rng.shuffle(output)
        rng.shuffle(errors)
        batch.completed, batch.failed = len(output), len(errors)
        if output:
            data = "".join(line + "\n" for line in output).encode()
            name = f"{batch.id}_output.jsonl"
            batch.output_file_id = self.files.add(name, "batch_output", data, uploaded=False).id
        if errors:
            data = "".join(line + "\n" for line in errors).encode()
            name = f"{batch.id}_error.jsonl"
            batch.error_file_id = self.files.add(name, "batch_output", data, uploaded=False).id
        batch.requests = []  # answered; only the files are kept
        self._enter(batch, status)


def _request_problem(raw: bytes, endpoint: str, seen: set[str]) -> dict[str, Any] | str:
    """The request on ``raw``, or what is wrong with it (which fails the whole batch)."""
    try:
        request = json.loads(raw)
    except ValueError:
        return "This line is not parseable as valid JSON."
    if not isinstance(request, dict):
        return "Each line must be a JSON object."
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "Each request needs a custom_id string."
    if custom_id in seen:
        return f"The custom_id {custom_id!r} appears more than once."
    seen.add(custom_id)
    if request.get("method") != "POST" or request.get("url") != endpoint:
        return f"Each request must be a POST to {endpoint}, the batch's endpoint."
    if not isinstance(request.get("body"), dict):
        return "Each request needs a JSON object body."
    return request


def _answer(request: dict[str, Any], embed: StubConfig, unique: str) -> tuple[str, bool, int]:
    """The output or error line of one request, whether it succeeded, and its tokens."""
    custom_id = request["custom_id"]
    request_id = f"req_{unique}"
    try:
        texts, model, encoding, dimensions = parse_embeddings_request(
            json.dumps(request["body"]).encode(),
            default_dimensions=embed.dimensions,
            max_inputs=embed.max_inputs,
            reject_substring=embed.reject_substring,
        )
        tokens = input_tokens(texts)
    except RequestError as exc:
        error = {
            "message": exc.message,
            "type": "invalid_request_error",
            "param": exc.param,
            "code": None,
        }
        response = {"status_code": 400, "request_id": request_id, "body": {"error": error}}
        line = {
            "id": f"batch_req_{unique}",
            "custom_id": custom_id,
            "response": response,
            "error": None,
        }
        return json.dumps(line), False, 0
    body = embeddings_response(texts, model, encoding, dimensions, tokens).decode()
    head = json.dumps({"id": f"batch_req_{unique}", "custom_id": custom_id})
    answer = f'{{"status_code":200,"request_id":"{request_id}","body":{body}}}'
    return f'{head[:-1]},"response":{answer},"error":null}}', True, tokens


def _unfinished(custom_id: str, status: str, unique: str) -> str:
    code, message = {
        "expired": (
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        ),
        "cancelled": (
            "batch_cancelled",
            "This request was not executed because the batch was cancelled.",
        ),
    }[status]
    line = {
        "id": f"batch_req_{unique}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return json.dumps(line)
