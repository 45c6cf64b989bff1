"""A text delivered again after its result was stored gets that vector, not a second call.

A Redis restart drops the acks on the old connection; the sweep then redelivers texts whose
SUCCESS is stored, and each was paid for again (the chaos run: about 70 per restart).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.unit.test_revoke import Api
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.microbatcher import MicroBatcher


class Stored:
    def __init__(self, vectors: dict[str, list[float]], fails: bool = False) -> None:
        self.vectors = vectors
        self.fails = fails

    def __call__(self, ids: list[str]) -> dict[str, list[float]]:
        if self.fails:
            raise ConnectionError("redis is down")
        return {task_id: self.vectors[task_id] for task_id in ids if task_id in self.vectors}


@pytest.fixture
def api() -> Api:
    return Api()


@pytest.fixture
def make(api: Api) -> Iterator[list[MicroBatcher]]:
    made: list[MicroBatcher] = []
    yield made
    for microbatcher in made:
        microbatcher.close(timeout_s=5)


def _microbatcher(api: Api, stored: Stored, made: list[MicroBatcher]) -> MicroBatcher:
    config = EmbeddingConfig(
        base_url="http://stub.test/v1", api_key="sk-test", encoding_format="float", max_retries=0
    )
    batcher = EmbeddingBatcher(config, transport=httpx.MockTransport(api), sleep=lambda s: None)
    microbatcher = MicroBatcher(batcher, flush_interval_s=0.01, stored=stored)
    made.append(microbatcher)
    return microbatcher


def test_a_text_whose_success_is_stored_gets_it_and_is_not_sent_again(api, make):
    microbatcher = _microbatcher(api, Stored({"done": [42.0]}), make)
    again = microbatcher.submit("embedded before", task_id="done")
    fresh = microbatcher.submit("new text", task_id="new")
    assert again.result(timeout=5) == [42.0]
    assert fresh.result(timeout=5) == [8.0]
    assert api.inputs == ["new text"]


def test_a_call_of_stored_texts_only_is_not_sent(api, make):
    microbatcher = _microbatcher(api, Stored({"a": [1.0], "b": [2.0]}), make)
    futures = [microbatcher.submit("one", task_id="a"), microbatcher.submit("two", task_id="b")]
    assert [f.result(timeout=5) for f in futures] == [[1.0], [2.0]]
    assert api.inputs == []
    assert microbatcher.submit("later", task_id="c").result(timeout=5) == [5.0]


def test_a_stored_text_whose_twin_still_needs_it_stays_in_the_call(api, make):
    microbatcher = _microbatcher(api, Stored({"done": [9.0]}), make)
    done = microbatcher.submit("twin", task_id="done")
    needs = microbatcher.submit("twin", task_id="needs")
    assert needs.result(timeout=5) == [4.0]
    assert done.result(timeout=5) == [4.0]  # the same text: the call's vector serves both
    assert api.inputs == ["twin"]


def test_an_unreadable_result_store_sends_the_call_whole(api, make):
    microbatcher = _microbatcher(api, Stored({"x": [1.0]}, fails=True), make)
    assert microbatcher.submit("unsure", task_id="x").result(timeout=5) == [6.0]
    assert api.inputs == ["unsure"]
