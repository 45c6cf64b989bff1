"""The per-process micro-batcher over an injected transport: grouping, flushing, isolation."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from worker.embeddings import EmbeddingAPIError, EmbeddingBatcher, EmbeddingConfig
from worker.errors import EmbeddingServerError
from worker.microbatcher import MicroBatcher, MicroBatcherClosed


def _vector(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 97)]


class Recorder:
    """An httpx handler that answers like the API and records each call's inputs and model."""

    def __init__(self, reject: str | None = None, status: int = 200) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.reject = reject
        self.status = status
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.gate.wait(5)
        body = json.loads(request.content)
        with self.lock:
            self.calls.append((body["model"], list(body["input"])))
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "down"}})
        if self.reject and any(self.reject in t for t in body["input"]):
            return httpx.Response(400, json={"error": {"message": "request has bad content"}})
        data = [{"index": i, "embedding": _vector(t)} for i, t in enumerate(body["input"])]
        return httpx.Response(200, json={"data": data[::-1], "usage": {"total_tokens": 1}})


@pytest.fixture
def make_microbatcher() -> Iterator[Callable[..., MicroBatcher]]:
    made: list[MicroBatcher] = []

    def make(
        handler: Recorder, flush_interval_s: float = 0.05, store_vectors=None, **config: object
    ) -> MicroBatcher:
        cfg = EmbeddingConfig(
            base_url="http://stub.test/v1",
            api_key="sk-test",
            encoding_format="float",
            max_retries=0,
            **config,  # type: ignore[arg-type]
        )
        batcher = EmbeddingBatcher(
            cfg, transport=httpx.MockTransport(handler), sleep=lambda s: None
        )
        microbatcher = MicroBatcher(
            batcher, flush_interval_s=flush_interval_s, store_vectors=store_vectors
        )
        made.append(microbatcher)
        return microbatcher

    yield make
    for microbatcher in made:
        microbatcher.close(timeout_s=5)


def test_sixteen_waiting_texts_leave_in_two_full_calls(make_microbatcher):
    recorder = Recorder()
    recorder.gate.clear()  # hold the first call so the rest queue up behind it
    microbatcher = make_microbatcher(recorder, flush_interval_s=10.0, pool_size=1)
    futures = [microbatcher.submit(f"text {i}") for i in range(17)]
    recorder.gate.set()
    vectors = [f.result(timeout=5) for f in futures[:16]]
    assert vectors == [_vector(f"text {i}") for i in range(16)]
    assert [len(inputs) for _, inputs in recorder.calls[:2]] == [8, 8]


def test_a_lone_text_is_sent_after_the_flush_interval(make_microbatcher):
    recorder = Recorder()
    microbatcher = make_microbatcher(recorder, flush_interval_s=0.05)
    assert microbatcher.submit("alone").result(timeout=2) == _vector("alone")
    assert recorder.calls == [("text-embedding-3-small", ["alone"])]


def test_one_call_carries_texts_of_one_model_only(make_microbatcher):
    recorder = Recorder()
    microbatcher = make_microbatcher(recorder, flush_interval_s=0.05)
    futures = [microbatcher.submit(f"t{i}", "model-a" if i % 2 else "model-b") for i in range(6)]
    for future in futures:
        future.result(timeout=2)
    assert sorted(model for model, _ in recorder.calls) == ["model-a", "model-b"]
    for model, inputs in recorder.calls:
        expected_parity = 1 if model == "model-a" else 0
        assert all(int(text[1:]) % 2 == expected_parity for text in inputs)


def test_a_rejected_text_fails_alone_and_its_neighbours_succeed(make_microbatcher):
    recorder = Recorder(reject="POISON")
    recorder.gate.clear()
    microbatcher = make_microbatcher(recorder, flush_interval_s=10.0, pool_size=1)
    texts = [f"good {i}" for i in range(8)]
    texts[5] = "POISON here"
    futures = [microbatcher.submit(text) for text in texts]
    recorder.gate.set()
    for i, future in enumerate(futures):
        if i == 5:
            with pytest.raises(EmbeddingAPIError) as info:
                future.result(timeout=5)
            assert info.value.status_code == 400
            assert "bad content" in str(info.value)
        else:
            assert future.result(timeout=5) == _vector(texts[i])


def test_a_server_error_reaches_every_text_of_the_call(make_microbatcher):
    microbatcher = make_microbatcher(Recorder(status=503), flush_interval_s=0.01)
    futures = [microbatcher.submit(f"t{i}") for i in range(3)]
    for future in futures:
        with pytest.raises(EmbeddingServerError):
            future.result(timeout=2)


def test_at_most_pool_size_calls_are_in_flight(make_microbatcher):
    in_flight = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()
    recorder = Recorder()

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        release.wait(0.2)
        with lock:
            in_flight -= 1
        return recorder(request)

    microbatcher = make_microbatcher(handler, flush_interval_s=0.001, pool_size=3)
    futures = [microbatcher.submit(f"t{i}") for i in range(80)]
    for future in futures:
        future.result(timeout=10)
    assert peak == 3


def test_a_call_that_ends_with_batches_due_sends_them_itself_with_its_slot(make_microbatcher):
    recorder = Recorder()
    entered = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        entered.set()
        return recorder(request)

    recorder.gate.clear()
    microbatcher = make_microbatcher(handler, flush_interval_s=10.0, pool_size=1)
    handed_to_call_threads = []
    submit = microbatcher._calls.submit
    microbatcher._calls.submit = lambda *a: (handed_to_call_threads.append(a), submit(*a))[1]

    futures = [microbatcher.submit(f"first {i}") for i in range(8)]
    assert entered.wait(5)  # the first call is out, and holds the only slot
    futures += [microbatcher.submit(f"queued {i}") for i in range(16)]
    recorder.gate.set()
    for future in futures:
        future.result(timeout=5)
    # Three full calls, but the dispatcher handed over only the first: the call thread
    # went straight on to the two batches that were due when it finished.
    assert [len(inputs) for _, inputs in recorder.calls] == [8, 8, 8]
    assert len(handed_to_call_threads) == 1


def test_a_call_hands_its_vectors_to_the_store_before_any_task_wakes(make_microbatcher):
    stored: list[list[tuple[str, list[float]]]] = []
    futures: list = []

    def store(vectors):
        assert not any(f.done() for f in futures)  # no task has its vector yet
        stored.append(vectors)

    recorder = Recorder(reject="POISON")
    recorder.gate.clear()
    microbatcher = make_microbatcher(recorder, flush_interval_s=10.0, store_vectors=store)
    futures += [microbatcher.submit(f"t{i}", task_id=f"id-{i}") for i in range(6)]
    futures.append(microbatcher.submit("POISON", task_id="id-poison"))
    futures.append(microbatcher.submit("no task id"))
    recorder.gate.set()
    for future in futures[:6]:
        future.result(timeout=5)
    # One store per call, with only the texts that succeeded and belong to a task.
    assert stored == [[(f"id-{i}", _vector(f"t{i}")) for i in range(6)]]
    with pytest.raises(EmbeddingAPIError):
        futures[6].result(timeout=5)
    assert futures[7].result(timeout=5) == _vector("no task id")


def test_the_next_call_goes_out_while_the_last_one_is_still_being_stored(make_microbatcher):
    release_store = threading.Event()
    stores = []

    def slow_store(vectors):
        stores.append(vectors)
        release_store.wait(5)

    recorder = Recorder()
    recorder.gate.clear()
    microbatcher = make_microbatcher(
        recorder, flush_interval_s=10.0, pool_size=1, store_vectors=slow_store
    )
    futures = [microbatcher.submit(f"t{i}", task_id=f"id-{i}") for i in range(16)]
    recorder.gate.set()
    deadline = time.monotonic() + 5
    while len(recorder.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # The only slot sent the second call although the first call's results are not stored.
    assert len(recorder.calls) == 2 and len(stores) == 1
    assert not any(f.done() for f in futures)
    release_store.set()
    assert [f.result(timeout=5) for f in futures] == [_vector(f"t{i}") for i in range(16)]


def test_a_failed_store_still_gives_every_task_its_vector(make_microbatcher):
    def store(vectors):
        raise ConnectionError("Redis is down")

    microbatcher = make_microbatcher(Recorder(), flush_interval_s=0.01, store_vectors=store)
    futures = [microbatcher.submit(f"t{i}", task_id=f"id-{i}") for i in range(3)]
    assert [f.result(timeout=5) for f in futures] == [_vector(f"t{i}") for i in range(3)]


def test_close_sends_what_waits_and_then_refuses_new_texts(make_microbatcher):
    recorder = Recorder()
    microbatcher = make_microbatcher(recorder, flush_interval_s=60.0)
    future = microbatcher.submit("waiting")
    microbatcher.close(timeout_s=5)
    assert future.result(timeout=1) == _vector("waiting")
    with pytest.raises(MicroBatcherClosed):
        microbatcher.submit("late")


def test_a_text_arriving_during_shutdown_goes_back_to_the_queue(monkeypatch):
    from celery.exceptions import Reject

    import worker.tasks as tasks

    class ClosedMicroBatcher:
        def submit(
            self, text: str, model: str | None = None, task_id: str | None = None, lane: str = ""
        ) -> None:
            raise MicroBatcherClosed("the worker is shutting down")

    monkeypatch.setattr(tasks, "get_microbatcher", ClosedMicroBatcher)
    with pytest.raises(Reject) as info:
        tasks.embed_text_task.run("late text")
    assert info.value.requeue is True


@pytest.mark.parametrize(("answer", "ahead"), [(True, True), (False, False), (None, False)])
def test_a_tasks_future_says_whether_its_call_stored_its_result(make_microbatcher, answer, ahead):
    def store(vectors):
        if answer is None:
            raise ConnectionError("Redis is down")
        return answer

    microbatcher = make_microbatcher(Recorder(), flush_interval_s=0.01, store_vectors=store)
    with_id = microbatcher.submit("stored", task_id="id-1")
    without_id = microbatcher.submit("in-process caller")
    assert with_id.result(timeout=5) == _vector("stored")
    assert without_id.result(timeout=5) == _vector("in-process caller")
    assert with_id.stored_ahead is ahead
    assert without_id.stored_ahead is False  # no task: nothing was stored for it
