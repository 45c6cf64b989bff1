"""The models the gateway serves, as OpenAI's clients see them, and its docs served offline."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from devstack import GatewayProcess
from tests.integration.harness import NO_API_URL, queued_texts, running_gateway, worker_env

pytestmark = pytest.mark.integration

KEY = "gw-models-key-5e21"
SERVED = ["text-embedding-3-small", "text-embedding-3-large"]


@pytest.fixture(scope="module")
def gateway(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = worker_env(
        NO_API_URL,
        {"GATEWAY_API_KEYS": KEY, "GATEWAY_MODELS": ",".join(SERVED)},
    )
    with running_gateway(env, tmp_path_factory.mktemp("gateway") / "gateway.log") as process:
        yield process


def _client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=30)


def test_models_lists_exactly_gateway_models(gateway) -> None:
    with _client(gateway) as client:
        assert [m.id for m in client.models.list()] == SERVED


def test_an_unknown_model_is_openais_404_model_not_found_and_nothing_is_queued(
    gateway, clean_redis
) -> None:
    with _client(gateway) as client, pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="text-embedding-ada-999", input="hello")
    assert info.value.code == "model_not_found"
    assert "`text-embedding-ada-999` does not exist" in info.value.message
    assert queued_texts(clean_redis) == 0


def test_an_upstream_404_is_a_404_model_not_found_not_a_bad_input(
    gateway, start_worker, stub
) -> None:
    start_worker(stub.base_url)
    stub.add_fault(status=404, count=1)
    with _client(gateway) as client, pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model=SERVED[1], input="a model the API does not know")
    assert info.value.code == "model_not_found"
    assert info.value.param is None


def test_docs_are_served_with_their_assets_from_the_gateway(gateway) -> None:
    page = httpx.get(gateway.url + "/docs", timeout=10)
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', page.text)
    assert len(assets) >= 2
    for asset in assets:
        assert httpx.get(gateway.url + asset, timeout=10).status_code == 200, asset
    schema = httpx.get(gateway.url + "/openapi.json", timeout=10).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
