"""OpenAI's own clients against ``python -m gateway`` (real uvicorn), real workers and the stub."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis

from devstack import GatewayProcess
from tests.integration.faultkit import expected
from tests.integration.harness import NO_API_URL, TEST_API_KEY, running_gateway, worker_env
from worker.names import BULK_QUEUE, INTERACTIVE_QUEUE
from worker.tokens import CL100K_BASE, count_tokens

pytestmark = pytest.mark.integration

DIMS = 16
MODEL = "text-embedding-3-small"
GATEWAY_KEY = "gw-integration-key-5f0c2b7e9d"


@pytest.fixture(scope="module")
def gateway(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # The same environment the workers get, upstream key included, as compose's shared .env
    # would give it: the gateway must drop that key and never need it.
    env = worker_env(
        NO_API_URL,
        {"GATEWAY_API_KEYS": f"another-key,{GATEWAY_KEY}", "GATEWAY_REQUEST_TIMEOUT_S": "30"},
    )
    with running_gateway(env, tmp_path_factory.mktemp("gateway") / "gateway.log") as process:
        yield process
    log = process.log_path.read_text()
    assert GATEWAY_KEY not in log and TEST_API_KEY not in log, "a key reached the log"


def _client(gateway: GatewayProcess, key: str = GATEWAY_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)


def _async_client(gateway: GatewayProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=60
    )


def test_float_vectors_come_back_in_input_order_with_exact_usage(
    start_worker, stub, gateway
) -> None:
    start_worker(stub.base_url)
    texts = [f"ordered text {i}: {'long ' * i}" for i in range(12)]
    with _client(gateway) as client:
        response = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in response.data] == list(range(12))
    assert [d.embedding for d in response.data] == [expected(t) for t in texts]
    assert response.model == MODEL
    tokens = count_tokens(texts, CL100K_BASE)  # as OpenAI counts them, and the stub
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (tokens, tokens)


def test_base64_asked_for_explicitly_is_little_endian_float32(start_worker, stub, gateway):
    start_worker(stub.base_url)
    texts = ["base64 one", "base64 two"]
    with _client(gateway) as client:
        response = client.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    for text, item in zip(texts, response.data, strict=True):
        assert isinstance(item.embedding, str)
        raw = base64.b64decode(item.embedding)
        assert list(struct.unpack(f"<{DIMS}f", raw)) == expected(text)


def test_the_clients_default_base64_is_decoded_to_floats_by_the_client(
    start_worker, stub, gateway
) -> None:
    # openai-python asks for base64 when no format is given, and decodes it itself.
    start_worker(stub.base_url)
    with _client(gateway) as client:
        response = client.embeddings.create(model=MODEL, input="a single string")
    assert len(response.data) == 1
    assert response.data[0].embedding == expected("a single string")


def test_sixty_four_concurrent_one_text_requests_share_api_calls(start_worker, stub, gateway):
    # Calls filled by count: with the default policy an idle worker sends the first texts at
    # once, so how many calls 64 requests make depends on how fast a busy machine lets the
    # gateway publish them (14 beside a CPU hog). What is tested is that separate requests
    # share calls, which the interval policy shows whatever the machine's speed.
    start_worker(
        stub.base_url, {"EMBEDDINGS_FLUSH_POLICY": "interval", "EMBEDDINGS_FLUSH_INTERVAL_S": "2"}
    )
    texts = [f"concurrent request {i}" for i in range(64)]

    async def main() -> list[list[float]]:
        async with _async_client(gateway) as client:
            responses = await asyncio.gather(
                *(client.embeddings.create(model=MODEL, input=t, encoding_format="float")
                  for t in texts)
            )  # fmt: skip
        return [r.data[0].embedding for r in responses]

    assert asyncio.run(main()) == [expected(t) for t in texts]
    stats = stub.stats()
    assert stats["total_inputs"] == 64
    assert stats["ok_calls"] <= 64 // 8 + 4, stats["inputs_per_call"]


@pytest.mark.parametrize(
    ("bad_input", "words"),
    [
        ("", "empty"),
        (["fine", ""], "index 1 is empty"),
        (["fine", None], "index 1 must be str"),
        ([{"text": "no"}], "index 0 must be str"),
        ([], "'$.input' is invalid"),
    ],
)
def test_bad_input_is_a_bad_request_error_and_nothing_is_enqueued(
    gateway, clean_redis, bad_input, words
) -> None:
    with _client(gateway) as client, pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=bad_input)
    assert info.value.status_code == 400
    assert words in info.value.message
    assert info.value.param == "input"
    assert clean_redis.llen(INTERACTIVE_QUEUE) == clean_redis.llen(BULK_QUEUE) == 0


def test_a_text_the_api_rejects_is_a_bad_request_with_the_apis_message(
    start_worker, stub, gateway
) -> None:
    start_worker(stub.base_url)
    with _client(gateway) as client, pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=["fine", "this is __REJECT__ content"])
    assert "disallowed content" in info.value.message


def test_dimensions_other_than_the_workers_are_refused_before_enqueueing(gateway, clean_redis):
    with _client(gateway) as client, pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="x", dimensions=8)
    assert "16-dimension" in info.value.message
    assert clean_redis.llen(INTERACTIVE_QUEUE) == clean_redis.llen(BULK_QUEUE) == 0


def test_a_wrong_key_is_an_authentication_error(gateway, clean_redis) -> None:
    with _client(gateway, "sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model=MODEL, input="no entry")
    assert clean_redis.llen(INTERACTIVE_QUEUE) == clean_redis.llen(BULK_QUEUE) == 0


def test_models_lists_the_configured_model(gateway) -> None:
    with _client(gateway) as client:
        assert [m.id for m in client.models.list()] == [MODEL]


def test_healthz_reports_redis_the_workers_and_the_queue_depth(start_worker, stub, gateway):
    import httpx

    start_worker(stub.base_url)
    body = httpx.get(gateway.url + "/healthz", timeout=10).json()
    assert body == {
        "status": "ok", "redis": True, "workers": 1, "queue_depth": 0,
        "lanes": {"interactive": 0, "bulk": 0},
    }  # fmt: skip
