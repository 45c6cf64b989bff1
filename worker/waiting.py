"""Texts waiting in one worker process for a call, by model, with identical texts merged.

Identical texts of one model (the process embeds every text with one ``dimensions``) go to
the API as one input: a batch holds up to ``batch_size`` distinct texts and every waiting
entry of each, and a text that arrives while an identical one is in a call joins that call.

Each model's queue has two lanes (docs/lanes.md). A batch takes interactive texts first, then
bulk ones, each lane oldest first: an interactive text goes into the next call that leaves,
in the place of the bulk text that would otherwise have been last in it, and that bulk text
heads the next call. So that bulk is never starved, once ``floor_every`` batches in a row
held interactive texts only while bulk ones waited, the next batch takes bulk texts first.

Not thread-safe: the micro-batcher holds its condition's lock around every method.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import chain

from worker.names import LANE_BULK, LANE_INTERACTIVE

__all__ = ["Batch", "Waiting", "WaitingTexts", "floor_every"]

_NEVER = 2**31 - 1


def floor_every(floor_share: float) -> int:
    """Calls with interactive texts in a row after which a waiting bulk call goes first.

    With ``n`` returned, bulk keeps ``1 / (n + 1)`` of the calls while both lanes wait: the
    nearest such share to ``floor_share`` (0.2 gives 4, a fifth; 1 gives 0, the lanes are
    served first come, first served; 0 gives a count no run reaches, bulk always yields).
    """
    if floor_share <= 0:
        return _NEVER
    return max(0, round((1.0 - floor_share) / floor_share))


@dataclass(eq=False)
class Waiting:
    """One task's text and the future its task waits on."""

    text: str
    future: Future[list[float]]
    since: float = 0.0  # monotonic seconds when it began to wait
    task_id: str | None = None
    rate_limited: int = 0  # 429s met so far; past the gate's bound, the text retries in Celery
    cache_checked: bool = False  # looked up in the vector cache already (a miss)
    lane: str = LANE_INTERACTIVE


_Predicate = Callable[[Waiting], bool]


@dataclass(eq=False)
class Batch:
    """One call's worth: its distinct ``texts`` and every entry waiting for each of them."""

    model: str
    texts: list[str]
    entries: dict[str, list[Waiting]] = field(default_factory=dict)
    tokens: int = 0  # charged to the shared budget

    def all_entries(self) -> list[Waiting]:
        return [waiting for text in self.texts for waiting in self.entries.get(text, [])]

    @property
    def serves_bulk(self) -> bool:
        """Whether any of its texts is bulk: then bulk is served, whatever the lane."""
        return any(w.lane == LANE_BULK for w in self.all_entries())

    @property
    def lane(self) -> str:
        """Interactive when any of its texts is: the budget serves the call as interactive."""
        interactive = any(w.lane == LANE_INTERACTIVE for w in self.all_entries())
        return LANE_INTERACTIVE if interactive else LANE_BULK


class _Lanes:
    """One model's queue: interactive entries, then bulk ones, each oldest first."""

    __slots__ = ("bulk", "interactive")

    def __init__(self) -> None:
        self.interactive: deque[Waiting] = deque()
        self.bulk: deque[Waiting] = deque()

    def of(self, lane: str) -> deque[Waiting]:
        return self.interactive if lane == LANE_INTERACTIVE else self.bulk

    def __iter__(self) -> Iterator[Waiting]:
        return chain(self.interactive, self.bulk)

    def bulk_first(self) -> Iterator[Waiting]:
        return chain(self.bulk, self.interactive)

    def __len__(self) -> int:
        return len(self.interactive) + len(self.bulk)

    def oldest_since(self) -> float:
        return min(lane[0].since for lane in (self.interactive, self.bulk) if lane)


class WaitingTexts:
    """Per-model queues of ``Waiting`` entries, interactive first, and the texts in calls."""

    def __init__(self, batch_size: int, floor_every: int = 4) -> None:
        self.batch_size = batch_size
        self.floor_every = floor_every
        self.pending = 0  # entries in the queues (not in calls)
        # Batches of interactive texts only, taken in a row while bulk texts waited.
        self._interactive_in_a_row = 0
        self._queues: OrderedDict[str, _Lanes] = OrderedDict()
        self._in_calls: dict[tuple[str, str], list[Waiting]] = {}

    def __bool__(self) -> bool:
        return bool(self._queues)

    def add(self, model: str, waiting: Waiting) -> int:
        """Queue ``waiting``; return its queue's length, or 0 if it joined a call in flight."""
        joined = self._in_calls.get((model, waiting.text))
        if joined is not None:
            joined.append(waiting)
            return 0
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _Lanes()
        queue.of(waiting.lane).append(waiting)
        self.pending += 1
        return len(queue)

    def models(self) -> list[str]:
        """The models with texts queued, the one waiting longest first."""
        return list(self._queues)

    def oldest_since(self) -> float:
        return min(queue.oldest_since() for queue in self._queues.values())

    def oldest_since_of(self, model: str) -> float:
        """When ``model``'s oldest queued text began to wait; it must have one."""
        return self._queues[model].oldest_since()

    def has_interactive(self, model: str, texts: list[str] | None = None) -> bool:
        """Whether an interactive text of ``model`` is queued; with ``texts``, one of those
        (a batch's head, which in bulk's turn may hold none of the waiting ones)."""
        queue = self._queues.get(model)
        return queue is not None and _any_of(queue.interactive, texts)

    def has_bulk(self, model: str, texts: list[str]) -> bool:
        """Whether one of ``texts`` (a batch's head) waits in ``model``'s bulk lane."""
        queue = self._queues.get(model)
        return queue is not None and _any_of(queue.bulk, texts)

    def head(self, model: str) -> list[str]:
        """The first ``batch_size`` distinct texts of ``model``'s queue: interactive ones first,
        unless it is bulk's turn."""
        texts: dict[str, None] = {}
        for waiting in self._in_order(model):
            texts.setdefault(waiting.text)
            if len(texts) == self.batch_size:
                break
        return list(texts)

    def distinct(self, model: str) -> int:
        """How many distinct texts wait for ``model``, counting at most ``batch_size``."""
        return len(self.head(model))

    def unchecked(self, model: str, texts: list[str]) -> list[str]:
        """Those of ``texts`` not yet looked up in the vector cache."""
        wanted = set(texts)
        found: dict[str, None] = {}
        for waiting in self._queues.get(model, ()):
            if waiting.text in wanted and not waiting.cache_checked:
                found.setdefault(waiting.text)
        return list(found)

    def mark_checked(self, model: str, texts: list[str]) -> None:
        wanted = set(texts)
        for waiting in self._queues.get(model, ()):
            if waiting.text in wanted:
                waiting.cache_checked = True

    def take(self, model: str, texts: set[str]) -> list[Waiting]:
        """Remove and return every queued entry of ``model`` whose text is in ``texts``."""
        return self._remove(model, lambda w: w.text in texts)

    def _bulk_turn(self, model: str) -> bool:
        queue = self._queues.get(model)
        return (
            queue is not None
            and bool(queue.bulk and queue.interactive)
            and 0 < self.floor_every <= self._interactive_in_a_row
        )

    def _in_order(self, model: str) -> Iterator[Waiting]:
        queue = self._queues.get(model)
        if queue is None:
            return iter(())
        return queue.bulk_first() if self._bulk_turn(model) else iter(queue)

    def pop_batch(self, model: str) -> Batch:
        """Take the head's texts with all their entries; they are in a call from now on."""
        bulk_waits = bool(self._queues[model].bulk) if model in self._queues else False
        bulk_turn = self._bulk_turn(model)
        texts = self.head(model)
        batch = Batch(model, texts, {text: [] for text in texts})
        for waiting in self.take(model, set(texts)):
            batch.entries[waiting.text].append(waiting)
        for text in texts:
            self._in_calls[(model, text)] = batch.entries[text]
        if bulk_turn or not bulk_waits or batch.serves_bulk:
            # Bulk was served (in its turn, or riding along), or nothing of it waits.
            self._interactive_in_a_row = 0
        else:
            self._interactive_in_a_row = min(self._interactive_in_a_row + 1, self.floor_every)
        return batch

    def finish(self, batch: Batch) -> None:
        """``batch``'s call is over: texts arriving from now on queue for a new call.

        Entries that joined while it was in flight are in ``batch.entries`` already.
        """
        for text in batch.texts:
            self._in_calls.pop((batch.model, text), None)

    def forget(self, model: str, text: str) -> None:
        """``text`` left its call before it was sent: arrivals no longer join that call."""
        self._in_calls.pop((model, text), None)

    def requeue(self, model: str, entries: list[Waiting]) -> None:
        """Put ``entries`` back at the head of their lanes in ``model``'s queue, in order."""
        if not entries:
            return
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _Lanes()
        for lane in (LANE_INTERACTIVE, LANE_BULK):
            queue.of(lane).extendleft(reversed([w for w in entries if w.lane == lane]))
        self.pending += len(entries)

    def pop_model(self, model: str) -> list[Waiting]:
        """Remove and return everything queued for ``model``."""
        return self._remove(model, lambda w: True)

    def pop_older_than(self, model: str, cutoff: float) -> list[Waiting]:
        """Remove and return ``model``'s entries that began to wait before ``cutoff``."""
        return self._remove(model, lambda w: w.since < cutoff)

    def _remove(self, model: str, matches: _Predicate) -> list[Waiting]:
        queue = self._queues.get(model)
        if queue is None:
            return []
        taken = [w for w in queue if matches(w)]
        if taken:
            queue.interactive = deque(w for w in queue.interactive if not matches(w))
            queue.bulk = deque(w for w in queue.bulk if not matches(w))
            if not queue:
                del self._queues[model]
            self.pending -= len(taken)
        return taken


def _any_of(lane: deque[Waiting], texts: list[str] | None) -> bool:
    """Whether ``lane`` holds any entry, or with ``texts``, an entry of one of them."""
    if not lane or texts is None:
        return bool(lane)
    wanted = set(texts)
    return any(waiting.text in wanted for waiting in lane)
