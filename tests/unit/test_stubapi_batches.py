"""The stub's Files and Batches endpoints, driven by OpenAI's own client over real HTTP.

OpenAI's SDK is the judge of "shaped as OpenAI's API is": it parses every object the stub
returns into its typed models. The batch delay is 0 or held long and released, so no test
waits on a clock.
"""

from __future__ import annotations

import base64
import json
from array import array
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from stubapi import StubServer, vector_for
from stubapi.batches import BatchConfig

DIMS = 8
KEY = "sk-stub-batches"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(dimensions=DIMS, api_key=KEY, batch=BatchConfig(delay_s=0)) as server:
        yield server


@pytest.fixture
def client(stub: StubServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=KEY, base_url=stub.base_url, max_retries=0) as sdk:
        yield sdk


def _requests(texts: list[str], **body: Any) -> bytes:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": text, **body},
        }
        for i, text in enumerate(texts)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _submit(client: openai.OpenAI, data: bytes) -> str:
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.status == "validating"
    return batch.id


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_a_batch_embeds_each_request_as_the_online_route_would_in_shuffled_order(
    stub: StubServer, client: openai.OpenAI
) -> None:
    texts = [f"text number {i}" for i in range(40)]
    batch = client.batches.retrieve(_submit(client, _requests(texts)))
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.completed == 40
    assert batch.error_file_id is None
    output = _lines(client, batch.output_file_id)
    ids = [line["custom_id"] for line in output]
    assert sorted(ids, key=lambda c: int(c[1:])) == [f"r{i}" for i in range(40)]
    assert ids != [f"r{i}" for i in range(40)]  # no particular order
    tokens = 0
    for line in output:
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200
        assert body["data"][0]["embedding"] == vector_for(texts[int(line["custom_id"][1:])], DIMS)
        tokens += body["usage"]["total_tokens"]
    assert batch.usage is not None and batch.usage.total_tokens == tokens > 0
    assert stub.stats()["calls"] == 0  # no online call


def test_base64_requests_get_float32_vectors_and_dimensions_are_honoured(
    client: openai.OpenAI,
) -> None:
    data = _requests(["short text"], encoding_format="base64", dimensions=4)
    batch = client.batches.retrieve(_submit(client, data))
    (line,) = _lines(client, batch.output_file_id)
    floats = array("f", base64.b64decode(line["response"]["body"]["data"][0]["embedding"]))
    assert floats.tolist() == pytest.approx(vector_for("short text", 4), abs=1e-6)


def test_a_rejected_request_goes_to_the_error_file_and_the_rest_succeed(
    client: openai.OpenAI,
) -> None:
    batch = client.batches.retrieve(_submit(client, _requests(["ok", "bad __REJECT__", "fine"])))
    assert batch.status == "completed"
    (error,) = _lines(client, batch.error_file_id)
    assert error["custom_id"] == "r1" and error["response"]["status_code"] == 400
    assert "disallowed" in error["response"]["body"]["error"]["message"]
    assert {line["custom_id"] for line in _lines(client, batch.output_file_id)} == {"r0", "r2"}


def test_a_batch_moves_through_its_states_while_held_and_completes_once_released(
    stub: StubServer, client: openai.OpenAI
) -> None:
    stub.batch_routes.batches.configure({"delay_s": 3600})
    batch_id = _submit(client, _requests(["a", "b"]))
    assert client.batches.retrieve(batch_id).status == "validating"
    stub.batch_routes.batches.configure({"delay_s": 0})
    assert client.batches.retrieve(batch_id).status == "completed"
    listed = client.batches.list(limit=5)
    assert [b.id for b in listed.data] == [batch_id]


def test_a_forced_expiry_answers_part_and_marks_the_rest_batch_expired(
    stub: StubServer, client: openai.OpenAI
) -> None:
    httpx.post(
        f"{stub.url}/_stub/batches",
        json={"force": [{"outcome": "expired", "completed_fraction": 0.25}]},
    ).raise_for_status()
    batch = client.batches.retrieve(_submit(client, _requests([f"t{i}" for i in range(8)])))
    assert batch.status == "expired"
    assert len(_lines(client, batch.output_file_id)) == 2
    errors = _lines(client, batch.error_file_id)
    assert len(errors) == 6 and {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_a_forced_failure_and_too_many_inputs_fail_the_batch_with_its_errors(
    stub: StubServer, client: openai.OpenAI
) -> None:
    httpx.post(f"{stub.url}/_stub/batches", json={"force": [{"outcome": "failed"}]})
    failed = client.batches.retrieve(_submit(client, _requests(["x"])))
    assert failed.status == "failed" and failed.output_file_id is None
    assert failed.errors is not None and failed.errors.data
    stub.batch_routes.batches.configure({"max_inputs": 3})
    too_big = client.batches.retrieve(_submit(client, _requests(["a", "b", "c", "d"])))
    assert too_big.status == "failed"
    assert too_big.errors is not None and too_big.errors.data
    assert "at most 3 embedding inputs" in (too_big.errors.data[0].message or "")


def test_a_cancelled_batch_ends_cancelled_with_the_unfinished_requests_as_errors(
    stub: StubServer, client: openai.OpenAI
) -> None:
    stub.batch_routes.batches.configure({"delay_s": 3600})
    batch_id = _submit(client, _requests(["a", "b", "c"]))
    assert client.batches.cancel(batch_id).status == "cancelling"
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "cancelled"
    assert {e["error"]["code"] for e in _lines(client, batch.error_file_id)} == {"batch_cancelled"}


def test_files_are_retrieved_listed_and_deleted_and_a_wrong_key_is_refused(
    stub: StubServer, client: openai.OpenAI
) -> None:
    uploaded = client.files.create(file=("in.jsonl", b'{"a": 1}\n'), purpose="batch")
    assert client.files.retrieve(uploaded.id).bytes == 9
    assert [f.id for f in client.files.list(purpose="batch").data] == [uploaded.id]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with (
        openai.OpenAI(api_key="sk-wrong", base_url=stub.base_url, max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.batches.list()


def test_a_line_that_is_not_a_request_fails_validation_naming_the_line(
    client: openai.OpenAI,
) -> None:
    data = _requests(["fine"]) + b'{"custom_id": "x", "method": "GET", "url": "/v1/embeddings"}\n'
    batch = client.batches.retrieve(_submit(client, data))
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data[0].line == 2


def test_the_stub_process_takes_a_batch_delay_option() -> None:
    from stubapi.__main__ import build_parser

    assert build_parser().parse_args(["--batch-delay-s", "0.01"]).batch_delay_s == 0.01
