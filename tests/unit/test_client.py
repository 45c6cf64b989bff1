"""``EmbeddingClient`` and ``EmbeddingBatcher`` over ``httpx.MockTransport``; nothing sleeps."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import struct
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.unit.conftest import error_response, inputs_of, ok_response, vector_for
from worker.embeddings import (
    EmbeddingAPIError,
    EmbeddingBatcher,
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingInputError,
    EmbeddingInputTypeError,
    EmbeddingPoolExhausted,
    EmbeddingRateLimitError,
    EmbeddingResponseError,
    EmbeddingServerError,
    EmbeddingTimeoutError,
    embed_text,
    embed_texts,
    get_counter,
    reset_default_batcher,
)
from worker.embeddings import batcher as batcher_module
from worker.embeddings import client as client_module

MakeBatcher = Callable[..., EmbeddingBatcher]
SECRET = "sk-secret-test-key"
FIXED_NOW = 1_700_000_000.0


class FakeAPI:
    """A MockTransport handler that plays ``steps`` in order, repeating the last one.

    A step is ``"ok"``, a status code, an exception class, or a ``request -> Response``.
    """

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps) or ["ok"]
        self.requests: list[httpx.Request] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        if step == "ok":
            return ok_response(request)
        if isinstance(step, int):
            return error_response(step, f"status {step} from the fake API")
        if isinstance(step, type) and issubclass(step, Exception):
            raise step("scripted failure", request=request)
        return step(request)  # type: ignore[no-any-return]

    @property
    def calls(self) -> int:
        return len(self.requests)

    @property
    def inputs(self) -> list[list[str]]:
        return [inputs_of(request) for request in self.requests]


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no API call expected, got {inputs_of(request)}")


def texts_of(n: int) -> list[str]:
    return [f"text number {i}" for i in range(n)]


# --- the retry schedule -------------------------------------------------------------------


def test_three_503s_then_success_wait_exactly_one_two_four_seconds(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    api = FakeAPI(503, 503, 503, "ok")
    result = make_batcher(api).embed_batch(["hello"])
    assert waits == [1.0, 2.0, 4.0]
    assert api.calls == 4
    assert result.retries == 3
    assert result.batch_size == 1
    assert result.embeddings == [vector_for("hello")]


@pytest.mark.parametrize(("random_value", "first_wait"), [(0.0, 0.8), (0.999999, 1.2)])
def test_jitter_keeps_the_first_wait_within_twenty_percent(
    make_batcher: MakeBatcher, waits: list[float], random_value: float, first_wait: float
) -> None:
    make_batcher(FakeAPI(503, "ok"), random=lambda: random_value).embed_batch(["hello"])
    assert len(waits) == 1
    assert waits[0] == pytest.approx(first_wait, abs=1e-5)
    assert 0.8 <= waits[0] <= 1.2


def test_waits_are_capped_at_max_backoff(make_batcher: MakeBatcher, waits: list[float]) -> None:
    api = FakeAPI(503)
    with pytest.raises(EmbeddingServerError):
        make_batcher(api, max_retries=5, max_backoff=3.0).embed_batch(["hello"])
    assert waits == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_after_max_retries_the_typed_error_says_how_many_retries(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    api = FakeAPI(503)
    with pytest.raises(EmbeddingServerError) as info:
        make_batcher(api).embed_batch(["hello"])
    assert api.calls == 4
    assert waits == [1.0, 2.0, 4.0]
    assert "after 3 retries" in str(info.value)
    assert info.value.status_code == 503
    assert info.value.api_message == "status 503 from the fake API"


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_each_retryable_status_is_retried(
    make_batcher: MakeBatcher, waits: list[float], status: int
) -> None:
    api = FakeAPI(status, "ok")
    result = make_batcher(api).embed_batch(["hello"])
    assert api.calls == 2
    assert waits == [1.0]
    assert result.retries == 1
    assert result.embeddings == [vector_for("hello")]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_client_error_is_not_retried_and_carries_the_apis_message(
    make_batcher: MakeBatcher, waits: list[float], status: int
) -> None:
    message = f"'$.input' is invalid ({status})"
    api = FakeAPI(lambda request: error_response(status, message))
    with pytest.raises(EmbeddingAPIError) as info:
        make_batcher(api).embed_batch(["hello"])
    assert api.calls == 1
    assert waits == []
    assert info.value.status_code == status
    assert info.value.api_message == message
    assert message in str(info.value)


def test_rate_limit_error_is_raised_when_the_last_failure_was_429(
    make_batcher: MakeBatcher,
) -> None:
    with pytest.raises(EmbeddingRateLimitError) as info:
        make_batcher(FakeAPI(503, 503, 503, 429)).embed_batch(["hello"])
    assert info.value.status_code == 429
    assert "after 3 retries" in str(info.value)


def test_server_error_is_raised_when_the_last_failure_was_5xx(make_batcher: MakeBatcher) -> None:
    with pytest.raises(EmbeddingServerError) as info:
        make_batcher(FakeAPI(429, 429, 429, 502)).embed_batch(["hello"])
    assert not isinstance(info.value, EmbeddingRateLimitError)
    assert info.value.status_code == 502


def test_a_client_error_after_retries_stops_at_once(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    api = FakeAPI(503, 400, "ok")
    with pytest.raises(EmbeddingAPIError) as info:
        make_batcher(api).embed_batch(["hello"])
    assert api.calls == 2
    assert waits == [1.0]
    assert info.value.status_code == 400


def test_an_error_body_that_is_not_json_becomes_the_api_message(make_batcher: MakeBatcher) -> None:
    api = FakeAPI(lambda request: httpx.Response(403, text="Forbidden by proxy"))
    with pytest.raises(EmbeddingAPIError) as info:
        make_batcher(api).embed_batch(["hello"])
    assert info.value.api_message == "Forbidden by proxy"


# --- server hints -------------------------------------------------------------------------


def test_rate_limit_is_retried_with_retry_after_seconds(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    api = FakeAPI(lambda request: error_response(429, retry_after="7"), "ok")
    make_batcher(api).embed_batch(["hello"])
    assert waits == [7.0]
    assert api.calls == 2


def test_rate_limit_is_retried_with_retry_after_http_date(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    date = email.utils.formatdate(FIXED_NOW + 3, usegmt=True)
    api = FakeAPI(lambda request: error_response(429, retry_after=date), "ok")
    make_batcher(api, clock=lambda: FIXED_NOW).embed_batch(["hello"])
    assert waits == [3.0]


def test_rate_limit_is_retried_with_retry_after_ms(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    api = FakeAPI(lambda request: error_response(429, retry_after_ms="1500"), "ok")
    make_batcher(api).embed_batch(["hello"])
    assert waits == [1.5]


def test_a_huge_retry_after_is_capped_at_max_backoff(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    api = FakeAPI(lambda request: error_response(503, retry_after="86400"), "ok")
    make_batcher(api, max_backoff=5.0).embed_batch(["hello"])
    assert waits == [5.0]


def test_x_should_retry_false_stops_retries(make_batcher: MakeBatcher, waits: list[float]) -> None:
    api = FakeAPI(lambda request: error_response(503, x_should_retry="false"), "ok")
    with pytest.raises(EmbeddingServerError) as info:
        make_batcher(api).embed_batch(["hello"])
    assert api.calls == 1
    assert waits == []
    assert info.value.status_code == 503


# --- timeouts and connection errors -------------------------------------------------------


def test_a_read_timeout_is_retried_then_raises_a_timeout_error(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    api = FakeAPI(httpx.ReadTimeout)
    with pytest.raises(EmbeddingTimeoutError) as info:
        make_batcher(api).embed_batch(["hello"])
    assert api.calls == 4
    assert waits == [1.0, 2.0, 4.0]
    assert "after 3 retries" in str(info.value)
    assert isinstance(info.value.__cause__, EmbeddingTimeoutError)
    assert isinstance(info.value.__cause__.__cause__, httpx.ReadTimeout)


def test_a_read_timeout_then_success_returns_vectors(make_batcher: MakeBatcher) -> None:
    result = make_batcher(FakeAPI(httpx.ReadTimeout, "ok")).embed_batch(["hello"])
    assert result.retries == 1
    assert result.embeddings == [vector_for("hello")]


def test_a_connect_error_is_retried_then_raises_a_connection_error(
    make_batcher: MakeBatcher, waits: list[float]
) -> None:
    api = FakeAPI(httpx.ConnectError)
    with pytest.raises(EmbeddingConnectionError) as info:
        make_batcher(api).embed_batch(["hello"])
    assert api.calls == 4
    assert waits == [1.0, 2.0, 4.0]
    assert "ConnectError" in str(info.value)


# --- responses ----------------------------------------------------------------------------


def test_vectors_land_in_input_order_when_the_api_shuffles_them(make_batcher: MakeBatcher) -> None:
    texts = texts_of(8)
    result = make_batcher(lambda request: ok_response(request, reverse=True)).embed_batch(texts)
    assert result.embeddings == [vector_for(text) for text in texts]


def test_base64_is_the_default_encoding_and_decodes_float32(make_batcher: MakeBatcher) -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        packed = base64.b64encode(struct.pack("<3f", 0.25, -1.5, 3.0)).decode()
        return httpx.Response(200, json={"data": [{"index": 0, "embedding": packed}]})

    result = make_batcher(handler).embed_batch(["hello"])
    assert bodies[0]["encoding_format"] == "base64"
    assert result.embeddings == [[0.25, -1.5, 3.0]]


def test_float_encoding_is_requested_when_configured(make_batcher: MakeBatcher) -> None:
    api = FakeAPI()
    result = make_batcher(api, encoding_format="float").embed_batch(["a", "b"])
    assert json.loads(api.requests[0].content)["encoding_format"] == "float"
    assert result.embeddings == [vector_for("a"), vector_for("b")]


def test_the_request_carries_model_input_dimensions_and_key(make_batcher: MakeBatcher) -> None:
    api = FakeAPI()
    make_batcher(api, api_key=SECRET, dimensions=256).embed_batch(["a", "b"], model="override")
    request = api.requests[0]
    body = json.loads(request.content)
    assert str(request.url) == "https://api.test/v1/embeddings"
    assert request.method == "POST"
    assert body["input"] == ["a", "b"]
    assert body["model"] == "override"
    assert body["dimensions"] == 256
    assert request.headers["Authorization"] == f"Bearer {SECRET}"


def test_the_configured_model_is_used_by_default(make_batcher: MakeBatcher) -> None:
    api = FakeAPI()
    make_batcher(api, model="text-embedding-3-large").embed_batch(["a"])
    body = json.loads(api.requests[0].content)
    assert body["model"] == "text-embedding-3-large"
    assert "dimensions" not in body


def _data_response(data: Any, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json={"data": data})


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(_data_response([{"index": 0, "embedding": [1.0]}]), id="wrong-count"),
        pytest.param(
            _data_response([{"index": 0, "embedding": [1.0]}, {"embedding": [2.0]}]),
            id="missing-index",
        ),
        pytest.param(
            _data_response([{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]),
            id="duplicate-index",
        ),
        pytest.param(
            _data_response([{"index": 0, "embedding": [1.0]}, {"index": 2, "embedding": [2.0]}]),
            id="index-out-of-range",
        ),
        pytest.param(lambda request: httpx.Response(200, text="{not json"), id="bad-json"),
        pytest.param(lambda request: httpx.Response(200, json={"object": "list"}), id="no-data"),
        pytest.param(_data_response({"0": [1.0]}), id="data-not-a-list"),
        pytest.param(
            _data_response([{"index": 0, "embedding": ["a"]}, {"index": 1, "embedding": ["b"]}]),
            id="non-numeric-embedding",
        ),
        pytest.param(
            _data_response([{"index": 0, "embedding": []}, {"index": 1, "embedding": []}]),
            id="empty-embedding",
        ),
        pytest.param(
            _data_response([{"index": 0, "embedding": "!!!"}, {"index": 1, "embedding": "!!!"}]),
            id="bad-base64",
        ),
        pytest.param(
            _data_response([{"index": 0, "embedding": "AAA="}, {"index": 1, "embedding": "AAA="}]),
            id="base64-not-float32",
        ),
        pytest.param(
            _data_response([{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2]}]),
            id="differing-sizes",
        ),
    ],
)
def test_a_malformed_response_raises_a_response_error_without_retrying(
    make_batcher: MakeBatcher,
    waits: list[float],
    handler: Callable[[httpx.Request], httpx.Response],
) -> None:
    api = FakeAPI(handler)
    with pytest.raises(EmbeddingResponseError):
        make_batcher(api).embed_batch(["one", "two"])
    assert api.calls == 1
    assert waits == []


def test_a_non_object_usage_raises_a_response_error(make_batcher: MakeBatcher) -> None:
    api = FakeAPI(
        lambda request: httpx.Response(
            200, json={"data": [{"index": 0, "embedding": [1.0]}], "usage": [1]}
        )
    )
    with pytest.raises(EmbeddingResponseError):
        make_batcher(api).embed_batch(["one"])


# --- batching -----------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "calls"), [(1, 1), (8, 1), (9, 2), (24, 3), (100, 13)])
def test_texts_are_sent_at_most_eight_per_call_as_in_the_seeds_table(
    make_batcher: MakeBatcher, count: int, calls: int
) -> None:
    api = FakeAPI()
    texts = texts_of(count)
    result = make_batcher(api).embed_batch(texts)
    assert api.calls == calls
    assert result.batch_size == calls
    assert all(1 <= len(inputs) <= 8 for inputs in api.inputs)
    assert sorted(text for inputs in api.inputs for text in inputs) == sorted(texts)
    assert result.embeddings == [vector_for(text) for text in texts]
    assert result.usage == {"prompt_tokens": count, "total_tokens": count}
    assert result.retries == 0
    assert result.latency_ms > 0


def test_retries_are_summed_over_calls(make_batcher: MakeBatcher, waits: list[float]) -> None:
    seen: set[str] = set()
    lock = threading.Lock()

    def fail_each_chunk_once(request: httpx.Request) -> httpx.Response:
        first = inputs_of(request)[0]
        with lock:
            retry = first in seen
            seen.add(first)
        return ok_response(request) if retry else error_response(503)

    result = make_batcher(fail_each_chunk_once).embed_batch(texts_of(24))
    assert result.retries == 3
    assert result.batch_size == 3
    assert waits == [1.0, 1.0, 1.0]


def test_an_empty_list_makes_no_call(make_batcher: MakeBatcher) -> None:
    result = make_batcher(never_called).embed_batch([])
    assert result.embeddings == []
    assert result.batch_size == 0


def test_one_failing_chunk_fails_the_batch_with_its_typed_error(make_batcher: MakeBatcher) -> None:
    def reject_the_second_chunk(request: httpx.Request) -> httpx.Response:
        if "text number 8" in inputs_of(request):
            return error_response(400, "chunk two is bad")
        return ok_response(request)

    with pytest.raises(EmbeddingAPIError, match="chunk two is bad"):
        make_batcher(reject_the_second_chunk).embed_batch(texts_of(24))


def test_three_chunks_are_in_flight_at_once(make_batcher: MakeBatcher) -> None:
    barrier = threading.Barrier(3, timeout=2)

    def handler(request: httpx.Request) -> httpx.Response:
        barrier.wait()  # breaks, failing the call, unless three calls wait here together
        return ok_response(request)

    result = make_batcher(handler, pool_size=3).embed_batch(texts_of(24))
    assert result.batch_size == 3
    assert not barrier.broken


def test_a_fourth_chunk_waits_so_no_more_than_pool_size_calls_are_in_flight(
    make_batcher: MakeBatcher,
) -> None:
    barrier = threading.Barrier(3, timeout=2)
    fourth_arrived = threading.Event()
    lock = threading.Lock()
    state = {"arrived": 0, "in_flight": 0, "max_in_flight": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            state["arrived"] += 1
            arrival = state["arrived"]
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            if arrival <= 3:
                barrier.wait()
                # A brief chance for an unbounded pool to start a fourth call meanwhile.
                fourth_arrived.wait(timeout=0.05)
            else:
                fourth_arrived.set()
            return ok_response(request)
        finally:
            with lock:
                state["in_flight"] -= 1

    result = make_batcher(handler, pool_size=3).embed_batch(texts_of(32))
    assert result.batch_size == 4
    assert state["arrived"] == 4
    assert state["max_in_flight"] == 3


# --- pool exhaustion ----------------------------------------------------------------------


class BlockFirstCall:
    """Holds the call for ``["first"]`` until ``release`` is set; answers others at once."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if inputs_of(request) == ["first"]:
            self.entered.set()
            self.release.wait(timeout=5)
        return ok_response(request)


@pytest.fixture
def blocker() -> Iterator[BlockFirstCall]:
    handler = BlockFirstCall()
    yield handler
    handler.release.set()  # never leave a thread hanging, whatever the test did


def test_a_call_that_finds_the_pool_full_raises_pool_exhausted(
    make_batcher: MakeBatcher, blocker: BlockFirstCall
) -> None:
    client = make_batcher(blocker, pool_size=1, pool_timeout=0.05, max_retries=0).client
    before = get_counter("embeddings.pool_exhausted")
    first = threading.Thread(target=client.embed, args=(["first"],))
    first.start()
    try:
        assert blocker.entered.wait(timeout=2)
        with pytest.raises(EmbeddingPoolExhausted, match="pool_size=1"):
            client.embed(["second"])
        assert get_counter("embeddings.pool_exhausted") == before + 1
    finally:
        blocker.release.set()
        first.join(timeout=2)
    assert not first.is_alive()
    assert client.embed(["second"]).embeddings == [vector_for("second")]


def test_pool_exhaustion_is_retried_like_other_transient_errors(
    make_batcher: MakeBatcher, blocker: BlockFirstCall, waits: list[float]
) -> None:
    client = make_batcher(blocker, pool_size=1, pool_timeout=0.02, max_retries=2).client
    before = get_counter("embeddings.pool_exhausted")
    first = threading.Thread(target=client.embed, args=(["first"],))
    first.start()
    try:
        assert blocker.entered.wait(timeout=2)
        with pytest.raises(EmbeddingPoolExhausted, match="after 2 retries"):
            client.embed(["second"])
        assert get_counter("embeddings.pool_exhausted") == before + 3
        assert waits == [1.0, 2.0]
    finally:
        blocker.release.set()
        first.join(timeout=2)


def test_a_batch_that_finds_the_pool_full_raises_pool_exhausted(
    make_batcher: MakeBatcher, blocker: BlockFirstCall
) -> None:
    batcher = make_batcher(blocker, pool_size=1, pool_timeout=0.05, max_retries=0)
    outcome: list[object] = []
    done = threading.Event()

    def second_batch() -> None:
        try:
            outcome.append(batcher.embed_batch(["second"]))
        except EmbeddingError as exc:
            outcome.append(exc)
        done.set()

    first = threading.Thread(target=batcher.embed_batch, args=(["first"],))
    second = threading.Thread(target=second_batch)
    first.start()
    try:
        assert blocker.entered.wait(timeout=2)
        second.start()
        # pool_timeout is 0.05 s: a correct batcher has given up well within this.
        assert done.wait(timeout=0.3), "the second batch is still waiting for the pool"
        assert isinstance(outcome[0], EmbeddingPoolExhausted)
    finally:
        blocker.release.set()
        first.join(timeout=2)
        if second.ident is not None:
            second.join(timeout=2)


# --- metrics ------------------------------------------------------------------------------


def test_a_successful_call_counts_success_and_latency(make_batcher: MakeBatcher) -> None:
    success_before = get_counter("embeddings.success", batch_size="8", retries="0")
    latency_before = get_counter("embeddings.latency_ms", batch_size="8")
    texts_before = get_counter("embeddings.texts")
    make_batcher(FakeAPI()).embed_batch(texts_of(8))
    assert get_counter("embeddings.success", batch_size="8", retries="0") == success_before + 1
    assert get_counter("embeddings.texts") == texts_before + 8
    assert get_counter("embeddings.latency_ms", batch_size="8") == latency_before + 1


def test_a_call_latency_is_also_observed_in_seconds_the_prometheus_base_unit(
    make_batcher: MakeBatcher,
) -> None:
    labels = {"batch_size": "8"}

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {n: sample(n) for n in ("embeddings_latency_seconds_count",
              "embeddings_latency_seconds_sum", "embeddings_latency_ms_sum")}  # fmt: skip
    result = make_batcher(FakeAPI()).embed_batch(texts_of(8))
    assert (
        sample("embeddings_latency_seconds_count") == before["embeddings_latency_seconds_count"] + 1
    )
    seconds = sample("embeddings_latency_seconds_sum") - before["embeddings_latency_seconds_sum"]
    millis = sample("embeddings_latency_ms_sum") - before["embeddings_latency_ms_sum"]
    assert seconds > 0
    assert seconds == pytest.approx(millis / 1000.0)
    assert seconds <= result.latency_ms / 1000.0 + 1e-9
    assert get_counter("embeddings.latency_seconds", batch_size="8") >= 1


def test_a_retry_is_counted_with_its_attempt_and_error_type(make_batcher: MakeBatcher) -> None:
    labels = {"attempt": "1", "error_type": "EmbeddingServerError"}
    retry_before = get_counter("embeddings.retry", **labels)
    success_before = get_counter("embeddings.success", batch_size="1", retries="1")
    make_batcher(FakeAPI(503, "ok")).embed_batch(["hello"])
    assert get_counter("embeddings.retry", **labels) == retry_before + 1
    assert get_counter("embeddings.success", batch_size="1", retries="1") == success_before + 1


def test_a_failure_is_counted_with_its_error_type(make_batcher: MakeBatcher) -> None:
    api_before = get_counter("embeddings.failure", error_type="EmbeddingAPIError", retries="0")
    rate_before = get_counter(
        "embeddings.failure", error_type="EmbeddingRateLimitError", retries="3"
    )
    with pytest.raises(EmbeddingAPIError):
        make_batcher(FakeAPI(400)).embed_batch(["hello"])
    with pytest.raises(EmbeddingRateLimitError):
        make_batcher(FakeAPI(429)).embed_batch(["hello"])
    assert get_counter("embeddings.failure", error_type="EmbeddingAPIError", retries="0") == (
        api_before + 1
    )
    assert get_counter("embeddings.failure", error_type="EmbeddingRateLimitError", retries="3") == (
        rate_before + 1
    )


# --- isolating a bad text -----------------------------------------------------------------


def reject_bad(request: httpx.Request) -> httpx.Response:
    if any("BAD" in text for text in inputs_of(request)):
        return error_response(400, "'$.input' is invalid. Please check the API reference.")
    return ok_response(request)


def test_isolation_returns_vectors_for_good_texts_and_an_error_for_the_bad_one(
    make_batcher: MakeBatcher,
) -> None:
    api = FakeAPI(reject_bad)
    texts = texts_of(8)
    texts[5] = "BAD text"
    results = make_batcher(api).embed_isolated(texts)
    assert len(results) == 8
    bad = results[5]
    assert isinstance(bad, EmbeddingAPIError)
    assert bad.status_code == 400
    for i, text in enumerate(texts):
        if i != 5:
            assert results[i] == vector_for(text)
    assert ["BAD text"] in api.inputs
    assert api.calls <= 7  # halving, not one call per text after the first


def test_isolation_finds_two_bad_texts(make_batcher: MakeBatcher) -> None:
    texts = texts_of(8)
    texts[0] = "BAD first"
    texts[7] = "BAD last"
    results = make_batcher(reject_bad).embed_isolated(texts)
    assert [isinstance(r, EmbeddingAPIError) for r in results] == [True] + [False] * 6 + [True]
    assert results[1:7] == [vector_for(text) for text in texts[1:7]]


def test_isolation_does_not_split_on_401(make_batcher: MakeBatcher) -> None:
    api = FakeAPI(401)
    results = make_batcher(api).embed_isolated(texts_of(8))
    assert api.calls == 1
    assert len(results) == 8
    assert all(isinstance(r, EmbeddingAPIError) and r.status_code == 401 for r in results)


def test_isolation_does_not_split_on_a_transient_error(make_batcher: MakeBatcher) -> None:
    api = FakeAPI(503)
    results = make_batcher(api).embed_isolated(texts_of(8))
    assert api.calls == 4  # one call and its three retries
    assert all(isinstance(r, EmbeddingServerError) for r in results)


def test_isolation_of_a_clean_call_makes_one_call(make_batcher: MakeBatcher) -> None:
    api = FakeAPI()
    texts = texts_of(8)
    assert make_batcher(api).embed_isolated(texts) == [vector_for(t) for t in texts]
    assert api.calls == 1


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error", "fragment"),
    [
        (42, EmbeddingInputTypeError, "must be str, got int"),
        (None, EmbeddingInputTypeError, "must be str, got NoneType"),
        (b"bytes", EmbeddingInputTypeError, "must be str, got bytes"),
        ("", EmbeddingInputError, "is empty"),
        ("   \n", EmbeddingInputError, "is whitespace-only"),
        ("\ud800", EmbeddingInputError, "lone surrogate"),
        ("x" * 101, EmbeddingInputError, "101 characters; the limit is 100"),
        ("a\x00b", EmbeddingInputError, "NUL character"),
    ],
)
def test_bad_input_is_rejected_before_any_call(
    make_batcher: MakeBatcher, bad: object, error: type[Exception], fragment: str
) -> None:
    texts: list[Any] = texts_of(8)
    texts[3] = bad
    with pytest.raises(error) as info:
        make_batcher(never_called, max_text_chars=100).embed_batch(texts)
    assert "index 3" in str(info.value)
    assert fragment in str(info.value)


def test_a_bare_str_is_refused_by_embed_batch(make_batcher: MakeBatcher) -> None:
    with pytest.raises(EmbeddingInputTypeError, match="not a single str") as info:
        make_batcher(never_called).embed_batch("hello")
    assert isinstance(info.value, TypeError)


# --- fork safety and secrets --------------------------------------------------------------


def test_a_new_http_client_is_made_after_a_fork_without_closing_the_old_one(
    make_batcher: MakeBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_batcher(FakeAPI()).client
    parent = client._client()
    assert client._client() is parent
    child_pid = os.getpid() + 1
    monkeypatch.setattr(client_module, "os", types.SimpleNamespace(getpid=lambda: child_pid))
    child = client._client()
    try:
        assert child is not parent
        assert not parent.is_closed
        assert client._client() is child
        assert client.embed(["after fork"]).embeddings == [vector_for("after fork")]
    finally:
        child.close()
        parent.close()


def test_the_api_key_never_appears_in_reprs(make_batcher: MakeBatcher) -> None:
    batcher = make_batcher(FakeAPI(), api_key=SECRET)
    assert batcher.config.api_key == SECRET
    assert SECRET not in repr(batcher.config)
    assert SECRET not in repr(batcher)
    assert SECRET not in repr(batcher.client)


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (401, EmbeddingAPIError),
        (httpx.ReadTimeout, EmbeddingTimeoutError),
        (httpx.ConnectError, EmbeddingConnectionError),
        (503, EmbeddingServerError),
    ],
)
def test_the_api_key_never_appears_in_a_raised_error(
    make_batcher: MakeBatcher, step: object, error: type[EmbeddingError]
) -> None:
    api = FakeAPI(step)
    with pytest.raises(error) as info:
        make_batcher(api, api_key=SECRET).embed_batch(["hello"])
    assert api.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    assert all(SECRET not in str(arg) for arg in info.value.args)


# --- module functions ---------------------------------------------------------------------


@pytest.fixture
def default_api(make_batcher: MakeBatcher, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPI]:
    api = FakeAPI()
    monkeypatch.setattr(batcher_module, "_default_batcher", make_batcher(api))
    yield api
    reset_default_batcher()


def test_embed_texts_uses_the_default_batcher(default_api: FakeAPI) -> None:
    texts = texts_of(20)
    assert embed_texts(texts) == [vector_for(text) for text in texts]
    assert default_api.calls == 3


def test_embed_text_returns_one_vector(default_api: FakeAPI) -> None:
    assert embed_text("hello") == vector_for("hello")
    assert default_api.inputs == [["hello"]]


def test_embed_text_rejects_bad_input_before_any_call(default_api: FakeAPI) -> None:
    with pytest.raises(EmbeddingInputError, match="text is empty"):
        embed_text("")
    with pytest.raises(EmbeddingInputTypeError, match="must be str"):
        embed_text(7)  # type: ignore[arg-type]
    assert default_api.calls == 0


def test_repeated_calls_share_one_default_batcher(default_api: FakeAPI) -> None:
    embed_text("one")
    embed_texts(["two", "three"])
    assert default_api.calls == 2
    assert batcher_module._default() is batcher_module._default()


def test_the_default_batcher_is_built_lazily_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBEDDINGS_BASE_URL", "http://stub.invalid/v1")
    monkeypatch.setattr(batcher_module, "_default_batcher", None)
    try:
        default = batcher_module._default()
        assert default.config.base_url == "http://stub.invalid/v1"
        assert batcher_module._default() is default
    finally:
        reset_default_batcher()
    assert batcher_module._default_batcher is None
