"""``embed-file``'s sliding window: refills while results come in, bounded, durable.

``embed_items`` is driven by a fake stream; ``QueueStream`` and ``ResultFeed`` run on
fakeredis, with ``enqueue_ids`` replaced, so no worker or real Redis is needed.
"""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery import Celery, states

import producers.sliding as sliding
from producers.cli import Item, embed_items
from producers.sliding import OutcomeSink, PendingIds, QueueStats, QueueStream, refill_size
from worker.celery_ext.result_feed import ResultFeed


class FakeStream:
    """A queue whose every ``wait`` finishes the oldest text in flight."""

    def __init__(self) -> None:
        self.flight: list[tuple[OutcomeSink, int, str]] = []
        self.finished = 0
        self.sends: list[tuple[int, int, int]] = []  # (texts, in flight, finished) at each send
        self.closed = 0

    @property
    def in_flight(self) -> int:
        return len(self.flight)

    def send(
        self,
        texts: Sequence[str],
        timeout_s: float,
        on_outcome: OutcomeSink,
        *,
        task_ids: Sequence[str] | None = None,
    ) -> None:
        self.sends.append((len(texts), self.in_flight, self.finished))
        self.flight.extend((on_outcome, i, text) for i, text in enumerate(texts))

    def wait(self, max_wait_s: float = 1.0) -> None:
        on_outcome, position, text = self.flight.pop(0)
        self.finished += 1
        on_outcome(position, [float(len(text))])

    def close(self) -> None:
        self.closed += 1


def test_the_window_slides_new_texts_go_out_before_the_first_window_is_done():
    items = [Item(n, n, text=f"text {n}") for n in range(1, 41)]
    stream = FakeStream()
    out = io.StringIO()
    summary = embed_items(items, out, stream, skip=set(), window=8)
    refill = refill_size(8)
    assert refill == 2
    assert all(size == refill for size, _flight, _done in stream.sends)
    assert max(flight + size for size, flight, _done in stream.sends) <= 8  # never past it
    # The first window (8 texts) fills, then each refill goes out as 2 of them finish.
    assert [(flight, done) for _size, flight, done in stream.sends[:6]] == [
        (0, 0),
        (2, 0),
        (4, 0),
        (6, 0),
        (6, 2),
        (6, 4),
    ]
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(r["line"] for r in records) == list(range(1, 41))
    assert summary.ok == 40 and stream.in_flight == 0 and stream.closed == 1


def test_a_stream_is_closed_even_when_the_run_is_interrupted():
    class Interrupted(FakeStream):
        def wait(self, max_wait_s: float = 1.0) -> None:
            raise KeyboardInterrupt

    stream = Interrupted()
    items = [Item(n, n, text=f"text {n}") for n in range(1, 21)]
    with pytest.raises(KeyboardInterrupt):
        embed_items(items, io.StringIO(), stream, skip=set(), window=4)
    assert stream.closed == 1


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """A stock Celery app whose Redis result backend talks to fakeredis."""
    celery_app = Celery("sliding-test", backend="redis://127.0.0.1:1/0", set_as_current=False)
    celery_app.conf.result_serializer = "json"
    celery_app.backend.client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield celery_app
    celery_app.close()


def _finish(app: Celery, task_id: str, value: Any, state: str = states.SUCCESS) -> None:
    app.backend.store_result(task_id, value, state)


class Enqueued:
    """Stands in for ``enqueue_ids``: records what would be published."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, texts: Sequence[str], **options: Any) -> list[str]:
        self.ids.extend(options["task_ids"])
        return list(options["task_ids"])


def test_a_queue_stream_hands_out_results_as_they_come_and_keeps_pending_durable(
    app: Celery, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    enqueued = Enqueued()
    monkeypatch.setattr(sliding, "enqueue_ids", enqueued)
    pending = PendingIds(tmp_path / "out.jsonl.pending")
    stats = QueueStats()
    stream = QueueStream(app, stats=stats, pending=pending)
    got: dict[int, Any] = {}
    stream.send(["a", "bb", "ccc"], 60, got.__setitem__, task_ids=["t1", "t2", "t3"])
    assert enqueued.ids == ["t1", "t2", "t3"] and set(pending.ids) == {"t1", "t2", "t3"}
    assert stream.in_flight == 3
    _finish(app, "t2", [2.0])
    stream.wait(5)
    assert got == {1: [2.0]} and stream.in_flight == 2
    # A refill goes out while t1 and t3 are still in flight.
    later: dict[int, Any] = {}
    stream.send(["dddd"], 60, later.__setitem__, task_ids=["t4"])
    _finish(app, "t4", [4.0])
    _finish(app, "t1", ValueError("rejected"), states.FAILURE)
    while len(got) + len(later) < 3:
        stream.wait(5)
    assert later == {0: [4.0]}
    assert got[0] == "ValueError: rejected"
    stream.close()
    # Collected: out of the sidecar and out of Redis. t3 may still finish: kept.
    assert set(PendingIds(pending.path).ids) == {"t3"}
    keys = [app.backend.get_key_for_task(t) for t in ("t1", "t2", "t4")]
    assert app.backend.client.exists(*keys) == 0
    assert (stats.enqueued, stats.collected) == (4, 3)


def test_a_ctrl_c_during_a_flush_waits_for_it_so_collected_results_still_leave_redis(
    app: Celery, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setattr(sliding, "enqueue_ids", Enqueued())
    pending = PendingIds(tmp_path / "out.jsonl.pending")
    stream = QueueStream(app, pending=pending)
    got: dict[int, Any] = {}
    ids = [f"t{n}" for n in range(3)]
    stream.send(["a", "b", "c"], 60, got.__setitem__, task_ids=ids)
    for task_id in ids:
        _finish(app, task_id, [1.0])
    while len(got) < 3:
        stream.wait(5)
    # Ctrl-C lands in the middle of the flush, between the sidecar and the DEL.
    discard = pending.discard

    def discard_then_interrupt(task_ids: Any) -> None:
        discard(task_ids)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(pending, "discard", discard_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        stream.close()
    keys = [app.backend.get_key_for_task(t) for t in ids]
    assert app.backend.client.exists(*keys) == 0


def test_a_text_past_its_timeout_gets_an_error_and_stays_pending(
    app: Celery, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setattr(sliding, "enqueue_ids", Enqueued())
    pending = PendingIds(tmp_path / "out.jsonl.pending")
    stream = QueueStream(app, pending=pending)
    got: dict[int, Any] = {}
    stream.send(["slow"], 0, got.__setitem__, task_ids=["slow-id"])
    stream.wait()
    assert got == {0: "no result within 0s (the task may still finish)"}
    assert stream.in_flight == 0
    stream.close()
    assert "slow-id" in PendingIds(pending.path)


def test_a_text_already_stored_or_pending_is_collected_not_enqueued_again(
    app: Celery, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    enqueued = Enqueued()
    monkeypatch.setattr(sliding, "enqueue_ids", enqueued)
    pending = PendingIds(tmp_path / "out.jsonl.pending")
    pending.add(["queued-before"])
    _finish(app, "stored-before", [7.0])
    stream = QueueStream(app, pending=pending)
    got: dict[int, Any] = {}
    stream.send(
        ["x", "y", "z"], 60, got.__setitem__, task_ids=["stored-before", "queued-before", "new"]
    )
    assert enqueued.ids == ["new"]
    stream.wait(5)
    assert got == {0: [7.0]}


def test_a_feed_keeps_its_subscription_bounded_over_a_long_run(app: Celery):
    feed = ResultFeed(app, read_chunk=4)
    taken = 0
    for round_ in range(10):
        ids = [f"r{round_}-{i}" for i in range(6)]
        feed.add(ids)
        for task_id in ids:
            _finish(app, task_id, [1.0])
        while feed.waiting:
            taken += len(feed.poll(5))
        assert feed.subscribed < feed.read_chunk + feed.waiting
    assert taken == 60
    feed.close()


class RecordingCache:
    """Stands in for the workers' ``VectorCache``: remembers the model of each read."""

    def __init__(self) -> None:
        self.models: list[str] = []

    def get_many(self, model: str, texts: Sequence[str]) -> list[list[float] | None]:
        self.models.append(model)
        return [[1.0] for _ in texts]


def test_the_cache_model_is_read_from_the_environment_once_not_per_send(
    app: Celery, monkeypatch: pytest.MonkeyPatch
):
    reads: list[str] = []
    from_env = sliding.Settings.from_env

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append("from_env")
        return from_env(*args, **kwargs)

    monkeypatch.setattr(sliding.Settings, "from_env", counted)
    monkeypatch.setenv("EMBEDDINGS_MODEL", "model-from-env")
    cache = RecordingCache()
    stream = QueueStream(app, cache=cache)  # type: ignore[arg-type]
    got: dict[int, Any] = {}
    for _ in range(3):
        stream.send(["a", "b"], 60, got.__setitem__)
    assert cache.models == ["model-from-env"] * 3
    assert reads == ["from_env"]
    assert got == {0: [1.0], 1: [1.0]}
