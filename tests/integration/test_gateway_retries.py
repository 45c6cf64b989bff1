"""openai-python's own retries against the gateway: each text is queued once, however retried."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from devstack import GatewayProcess
from stubapi.vectors import vector_for
from tests.integration.harness import NO_API_URL, queued_texts, running_gateway, worker_env
from worker.names import INTERACTIVE_QUEUE

pytestmark = pytest.mark.integration

MODEL = "text-embedding-3-small"
GATEWAY_KEY = "gw-retries-key-3a9e1c"


@pytest.fixture(scope="module")
def gateway(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # A short request timeout, so the client's retries come and go within a test.
    env = worker_env(
        NO_API_URL,
        {
            "GATEWAY_API_KEYS": GATEWAY_KEY,
            "GATEWAY_REQUEST_TIMEOUT_S": "0.5",
            "GATEWAY_WORKER_PING_TIMEOUT_S": "0.3",
        },
    )
    with running_gateway(env, tmp_path_factory.mktemp("gateway") / "gateway.log") as process:
        yield process


def _client(gateway: GatewayProcess, retries: int) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=retries, timeout=30
    )


def test_the_clients_retries_queue_each_text_once_and_a_later_retry_gets_the_vectors(
    gateway, clean_redis, start_worker, stub
) -> None:
    texts = [f"retried text {i}" for i in range(4)]
    with _client(gateway, retries=2) as client, pytest.raises(openai.InternalServerError) as info:
        client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    # Three attempts (the first and openai-python's two retries), four messages: not twelve.
    assert clean_redis.llen(INTERACTIVE_QUEUE) == 4
    assert queued_texts(clean_redis) == 4
    assert info.value.status_code == 503
    assert info.value.code == "no_workers", info.value.message

    start_worker(stub.base_url)
    # Retries again: with a 0.5 s request timeout a loaded machine may need more than one
    # attempt, and every attempt waits on the same four tasks.
    with _client(gateway, retries=20) as client:
        response = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.embedding for d in response.data] == [
        pytest.approx(vector_for(t, 16), rel=1e-6, abs=1e-7) for t in texts
    ]
    assert stub.stats()["total_inputs"] == 4  # each text paid for once
    assert queued_texts(clean_redis) == 0


def test_an_idempotency_key_reused_for_another_body_is_a_422(gateway, clean_redis) -> None:
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}", "Idempotency-Key": "batch-7"}
    first = httpx.post(
        gateway.base_url + "/embeddings",
        json={"model": MODEL, "input": ["one", "two"]},
        headers=headers,
        timeout=30,
    )
    assert first.status_code == 503  # no worker: the texts wait in the queue
    again = httpx.post(
        gateway.base_url + "/embeddings",
        json={"model": MODEL, "input": ["one", "two"]},
        headers=headers,
        timeout=30,
    )
    assert again.status_code == 503
    other = httpx.post(
        gateway.base_url + "/embeddings",
        json={"model": MODEL, "input": ["another"]},
        headers=headers,
        timeout=30,
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert queued_texts(clean_redis) == 2


def test_a_repeat_reuses_done_tasks_and_enqueues_failed_ones_anew(
    gateway, start_worker, stub
) -> None:
    start_worker(stub.base_url)
    done = ["a text embedded once"]
    rejected = ["this is __REJECT__ content"]
    with _client(gateway, retries=20) as client:
        first = client.embeddings.create(model=MODEL, input=done, encoding_format="float")
        calls = stub.stats()["calls"]
        again = client.embeddings.create(model=MODEL, input=done, encoding_format="float")
        assert again.data[0].embedding == first.data[0].embedding
        assert stub.stats()["calls"] == calls  # answered from the stored result

        for attempt in (1, 2):
            with pytest.raises(openai.BadRequestError) as info:
                client.embeddings.create(model=MODEL, input=rejected)
            assert "disallowed content" in info.value.message
            # A failed task is not replayed: each request sent the text to the API again.
            assert stub.stats()["failed_calls"] == attempt
