"""Tokens through the gateway with OpenAI's own client (issue #23): token arrays get the
vectors their texts get, ``usage`` is the exact count, and over-long inputs are refused
before anything is enqueued. Real uvicorn, a real worker, the stub counting cl100k_base."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis

from devstack import GatewayProcess
from tests.integration.faultkit import expected
from tests.integration.harness import NO_API_URL, queued_texts, running_gateway, worker_env
from tests.overlong import NUMBERS_TOKENS, numbers_text
from worker.tokens import CL100K_BASE, _encoding

pytestmark = pytest.mark.integration

MODEL = "text-embedding-3-small"
GATEWAY_KEY = "gw-tokens-key-3c9a1f7e20"
TEXTS = ["The quick brown fox", "jumps over the lazy dog.", "お誕生日おめでとう 🎂"]


def encode(text: str) -> list[int]:
    """``text``'s ids as a client's tiktoken gives them (the same file, the same BPE)."""
    return _encoding(CL100K_BASE).encode_ordinary(text)


@pytest.fixture(scope="module")
def gateway(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = worker_env(
        NO_API_URL,
        {"GATEWAY_API_KEYS": GATEWAY_KEY, "GATEWAY_REQUEST_TIMEOUT_S": "30"},
    )
    with running_gateway(env, tmp_path_factory.mktemp("gateway") / "gateway.log") as process:
        yield process


def _client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0, timeout=30)


def test_token_arrays_get_the_vectors_of_their_texts_and_exact_usage(start_worker, stub, gateway):
    start_worker(stub.base_url)
    arrays = [encode(text) for text in TEXTS]
    with _client(gateway) as client:
        by_tokens = client.embeddings.create(model=MODEL, input=arrays, encoding_format="float")
        by_text = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
        one = client.embeddings.create(model=MODEL, input=arrays[2])  # list[int]: one input
    assert [d.embedding for d in by_tokens.data] == [expected(t) for t in TEXTS]
    assert [d.embedding for d in by_tokens.data] == [d.embedding for d in by_text.data]
    assert [d.embedding for d in one.data] == [expected(TEXTS[2])]
    tokens = sum(map(len, arrays))
    assert by_tokens.usage.prompt_tokens == by_tokens.usage.total_tokens == tokens
    # The same count for the texts, and the one the stub (cl100k_base, as OpenAI) charged.
    assert by_text.usage.prompt_tokens == tokens
    assert one.usage.prompt_tokens == len(arrays[2])


@pytest.mark.parametrize(
    ("bad_input", "words"),
    [
        (["fine", numbers_text()], f"text at index 1 has {NUMBERS_TOKENS} tokens"),
        ([[15339], [64] * 8193], "token array at index 1 has 8193 tokens"),
        ([[15339], []], "token array at index 1 is empty"),
        ([[15339, 100300]], "token id 100300 at offset 1 is not in cl100k_base"),
    ],
)
def test_an_input_over_the_limit_or_a_bad_array_is_a_400_and_nothing_is_enqueued(
    gateway, clean_redis, bad_input, words
) -> None:
    with _client(gateway) as client, pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=bad_input)
    assert info.value.status_code == 400
    assert words in info.value.message
    assert info.value.param == "input"
    if "tokens" in words:
        assert "the limit is 8192 tokens per input" in info.value.message
    assert queued_texts(clean_redis) == 0


def test_token_arrays_for_a_model_of_unknown_encoding_are_a_clear_400(gateway, clean_redis):
    with _client(gateway) as client, pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="BAAI/bge-m3", input=[[15339, 1917]])
    assert info.value.code == "token_arrays_unsupported"
    assert "'BAAI/bge-m3'" in info.value.message
    assert queued_texts(clean_redis) == 0
