"""Revoked texts leave their call before it is sent; producers.revoke checks its ids."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

import producers
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.errors import EmbeddingInputTypeError
from worker.microbatcher import MicroBatcher
from worker.revocation import TextRevoked


class Api:
    """Answers like the API; records every input it was sent."""

    def __init__(self) -> None:
        self.inputs: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        with self.lock:
            self.inputs.extend(texts)
        data = [{"index": i, "embedding": [float(len(t))]} for i, t in enumerate(texts)]
        return httpx.Response(200, json={"data": data, "usage": {"total_tokens": 1}})


class RevokeList:
    def __init__(self, revoked: set[str], fails: bool = False) -> None:
        self.revoked = revoked
        self.fails = fails
        self.asked: list[list[str]] = []

    def __call__(self, ids: list[str]) -> set[str]:
        self.asked.append(list(ids))
        if self.fails:
            raise ConnectionError("redis is down")
        return self.revoked & set(ids)


@pytest.fixture
def api() -> Api:
    return Api()


def _microbatcher(api: Api, revoked: RevokeList) -> MicroBatcher:
    config = EmbeddingConfig(
        base_url="http://stub.test/v1", api_key="sk-test", encoding_format="float", max_retries=0
    )
    batcher = EmbeddingBatcher(config, transport=httpx.MockTransport(api), sleep=lambda s: None)
    return MicroBatcher(batcher, flush_interval_s=0.01, revoked=revoked)


@pytest.fixture
def make(api: Api) -> Iterator[list[MicroBatcher]]:
    made: list[MicroBatcher] = []
    yield made
    for microbatcher in made:
        microbatcher.close(timeout_s=5)


def test_revoked_texts_never_reach_the_api_and_their_tasks_are_told(api, make):
    revoked = RevokeList({"t1", "t3"})
    microbatcher = _microbatcher(api, revoked)
    make.append(microbatcher)
    futures = {f"t{i}": microbatcher.submit(f"text {i}", task_id=f"t{i}") for i in range(5)}
    for task_id in ("t0", "t2", "t4"):
        assert futures[task_id].result(timeout=5) == [6.0]
    for task_id in ("t1", "t3"):
        with pytest.raises(TextRevoked):
            futures[task_id].result(timeout=5)
    assert sorted(api.inputs) == ["text 0", "text 2", "text 4"]
    # One question per call, about every text of it.
    assert sum(len(ids) for ids in revoked.asked) == 5


def test_a_call_whose_texts_are_all_revoked_is_not_sent(api, make):
    microbatcher = _microbatcher(api, RevokeList({"a", "b"}))
    make.append(microbatcher)
    futures = [microbatcher.submit("same", task_id="a"), microbatcher.submit("other", task_id="b")]
    for future in futures:
        with pytest.raises(TextRevoked):
            future.result(timeout=5)
    assert api.inputs == []
    # The process carries on: a later text is embedded.
    assert microbatcher.submit("later", task_id="c").result(timeout=5) == [5.0]


def test_a_revoked_duplicate_leaves_while_its_twin_is_embedded(api, make):
    microbatcher = _microbatcher(api, RevokeList({"gone"}))
    make.append(microbatcher)
    kept = microbatcher.submit("twin", task_id="kept")
    gone = microbatcher.submit("twin", task_id="gone")
    assert kept.result(timeout=5) == [4.0]
    with pytest.raises(TextRevoked):
        gone.result(timeout=5)
    assert api.inputs == ["twin"]


def test_an_unreadable_revoke_list_sends_nothing_and_fails_the_texts_with_its_error(api, make):
    microbatcher = _microbatcher(api, RevokeList(set(), fails=True))
    make.append(microbatcher)
    future = microbatcher.submit("unsure", task_id="x")
    with pytest.raises(ConnectionError):
        future.result(timeout=5)
    assert api.inputs == []


@pytest.mark.parametrize("bad", [[""], [None], [3]])
def test_revoke_refuses_anything_but_task_id_strings(bad):
    with pytest.raises(EmbeddingInputTypeError, match="index 0"):
        producers.revoke(bad)
