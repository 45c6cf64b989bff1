"""The gateway's HTTP contract with the queue faked: validation, limits, errors, auth, health."""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway import GatewaySettings, Health, create_app
from gateway.idempotency import RequestKey
from gateway.schemas import TEXT_PATTERN
from worker.errors import (
    EmbeddingAPIError,
    EmbeddingQueueUnavailableError,
    EmbeddingResponseError,
    EmbeddingResultStoreUnavailableError,
    EmbeddingResultTimeoutError,
    EmbeddingServerError,
)
from worker.tokens import CL100K_BASE, token_counter

KEY = "gw-key-0123456789abcdef"
OTHER_KEY = "gw-other-key-fedcba9876543210"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "text-embedding-3-small"


def vector_for(text: str) -> list[float]:
    """A 4-d vector per text, exact in float32."""
    return [float(len(text)), float(ord(text[0])), 0.5, -2.0]


class FakeService:
    """The queue side, in memory: records what would be enqueued."""

    def __init__(self) -> None:
        self.embedded: list[tuple[list[str], str]] = []
        self.lanes: list[str] = []  # each embed call's lane
        self.request_keys: list[RequestKey | None] = []
        self.error: BaseException | None = None
        self.depth = 0
        self.depth_asked: list[str] = []  # the lanes whose depth was read
        self.health_report = Health(redis=True, workers=2, queue_depth=0)
        self.closed = False

    async def embed(
        self,
        texts: Sequence[str],
        *,
        model: str,
        timeout_s: float,
        lane: str,
        request_key: RequestKey | None = None,
        on_reuse: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        self.embedded.append((list(texts), model))
        self.lanes.append(lane)
        self.request_keys.append(request_key)
        if self.error is not None:
            raise self.error
        return [vector_for(text) for text in texts]

    async def queue_depth(self, lane: str = "interactive") -> int:
        self.depth_asked.append(lane)
        if isinstance(self.error, EmbeddingQueueUnavailableError):
            raise self.error
        return self.depth

    async def health(self) -> Health:
        return self.health_report

    async def aclose(self) -> None:
        self.closed = True


SETTINGS = GatewaySettings(api_keys=(KEY, OTHER_KEY), max_body_bytes=4096, max_text_chars=500)


@pytest.fixture
def service() -> FakeService:
    return FakeService()


def _client(service: FakeService, settings: GatewaySettings = SETTINGS) -> TestClient:
    return TestClient(create_app(settings, lambda: service), raise_server_exceptions=False)


@pytest.fixture
def client(service: FakeService) -> Iterator[TestClient]:
    with _client(service) as test_client:
        yield test_client


def _post(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/embeddings", json=body, headers=AUTH if headers is None else headers)


def _error(response: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    return error


def test_a_list_of_texts_comes_back_as_float_vectors_in_input_order(client, service) -> None:
    texts = ["zebra", "apple", "mango tree"]
    response = _post(client, {"input": texts, "model": MODEL})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert [d["object"] for d in body["data"]] == ["embedding"] * 3
    assert [d["embedding"] for d in body["data"]] == [vector_for(t) for t in texts]
    # OpenAI's own count: cl100k_base, the model's encoding
    tokens = sum(map(token_counter(CL100K_BASE), texts))
    assert tokens == 6  # "zebra" 2, "apple" 1, "mango tree" 3
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert service.embedded == [(texts, MODEL)]
    assert service.lanes == ["interactive"]  # a request has a caller waiting: the default


def test_a_single_string_is_one_input(client, service) -> None:
    response = _post(client, {"input": "just one", "model": MODEL, "user": "ignored"})
    assert [d["embedding"] for d in response.json()["data"]] == [vector_for("just one")]
    assert service.embedded == [(["just one"], MODEL)]


def test_base64_is_little_endian_float32(client) -> None:
    response = _post(client, {"input": ["abc"], "model": MODEL, "encoding_format": "base64"})
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    assert list(struct.unpack("<4f", raw)) == vector_for("abc")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": "", "model": MODEL}, "input", "empty"),
        ({"input": ["ok", "   "], "model": MODEL}, "input", "index 1 is whitespace-only"),
        ({"input": [], "model": MODEL}, "input", "'$.input' is invalid"),
        ({"input": ["ok", 3.5], "model": MODEL}, "input", "index 1 must be str"),
        ({"input": "x" * 501, "model": MODEL}, "input", "the limit is 500"),
        ({"input": "nul\x00", "model": MODEL}, "input", "NUL"),
        ({"model": MODEL}, "input", "'input' is a required property"),
        ({"input": "ok"}, "model", "provide a model"),
        ({"input": "ok", "model": MODEL, "encoding_format": "hex"}, "encoding_format", "float"),
        ({"input": "ok", "model": MODEL, "dimensions": 0}, "dimensions", "positive"),
        ({"input": "ok", "model": MODEL, "dimensions": True}, "dimensions", "positive"),
    ],
)
def test_a_bad_request_gets_400_naming_the_parameter_and_enqueues_nothing(
    client, service, body, param, words
) -> None:
    error = _error(_post(client, body), 400, param)
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]
    assert service.embedded == []


def test_more_than_2048_inputs_get_400_and_nothing_is_enqueued(service) -> None:
    roomy = replace(SETTINGS, max_body_bytes=1 << 20)
    with _client(service, roomy) as client:
        error = _error(_post(client, {"input": ["a"] * 2049, "model": MODEL}), 400, "input")
        assert "max number of inputs is 2048" in error["message"]
        assert _post(client, {"input": ["a"] * 2048, "model": MODEL}).status_code == 200
    assert [len(texts) for texts, _ in service.embedded] == [2048]


def test_a_body_that_is_not_json_gets_400(client, service) -> None:
    response = client.post("/v1/embeddings", content=b"{not json", headers=AUTH)
    assert "could not parse the JSON" in _error(response, 400)["message"]


def test_a_declared_body_over_the_limit_gets_413_before_it_is_read(client, service) -> None:
    body = {"input": "y" * 5000, "model": MODEL}
    error = _error(_post(client, body), 413)
    assert "GATEWAY_MAX_BODY_BYTES" in error["message"]
    assert error["code"] == "request_too_large"
    assert service.embedded == []


def test_a_chunked_body_over_the_limit_gets_413(client, service) -> None:
    chunks = (b"z" * 1000 for _ in range(10))  # no Content-Length: sent chunked
    response = client.post("/v1/embeddings", content=chunks, headers=AUTH)
    assert _error(response, 413)["code"] == "request_too_large"
    assert service.embedded == []


def test_a_missing_key_gets_401(client, service) -> None:
    error = _error(_post(client, {"input": "x", "model": MODEL}, headers={}), 401)
    assert "didn't provide an API key" in error["message"]
    assert service.embedded == []


@pytest.mark.parametrize(
    "header", [f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", f"Basic {KEY}", "Bearer ", KEY]
)
def test_a_wrong_key_gets_401(client, service, header) -> None:
    response = _post(client, {"input": "x", "model": MODEL}, headers={"Authorization": header})
    assert _error(response, 401)["type"] == "invalid_request_error"
    assert service.embedded == []


def test_every_configured_key_is_accepted(client) -> None:
    for key in (KEY, OTHER_KEY):
        response = _post(client, {"input": "x", "model": MODEL}, {"Authorization": f"Bearer {key}"})
        assert response.status_code == 200


def test_without_keys_and_allow_no_auth_requests_need_no_header(service) -> None:
    with _client(service, GatewaySettings(allow_no_auth=True)) as client:
        assert _post(client, {"input": "x", "model": MODEL}, headers={}).status_code == 200


def test_a_queue_over_its_bound_gets_429_with_retry_after(service) -> None:
    service.depth = 100
    with _client(service, replace(SETTINGS, max_queue_depth=100)) as client:
        response = _post(client, {"input": "x", "model": MODEL})
        assert _error(response, 429)["code"] == "rate_limit_exceeded"
        assert response.headers["retry-after"] == "1"
        service.depth = 99
        assert _post(client, {"input": "x", "model": MODEL}).status_code == 200
    assert len(service.embedded) == 1
    assert service.depth_asked == ["interactive", "interactive"]  # the request's lane's queue


def test_dimensions_other_than_the_workers_size_get_400_before_enqueueing(service) -> None:
    with _client(service, replace(SETTINGS, dimensions=4)) as client:
        body = {"input": "x", "model": MODEL, "dimensions": 8}
        error = _error(_post(client, body), 400, "dimensions")
        assert "serves 4-dimension" in error["message"]
        assert service.embedded == []
        assert _post(client, {"input": "x", "model": MODEL, "dimensions": 4}).status_code == 200


def test_dimensions_are_checked_against_the_vectors_when_the_size_is_native(client) -> None:
    # EMBEDDINGS_DIMENSIONS=0: the gateway learns the size from the vectors themselves.
    body = {"input": "x", "model": MODEL, "dimensions": 2}
    error = _error(_post(client, body), 400, "dimensions")
    assert "serves 4-dimension" in error["message"]
    assert _post(client, {"input": "x", "model": MODEL, "dimensions": 4}).status_code == 200


@pytest.mark.parametrize(
    ("error", "status", "words"),
    [
        (EmbeddingAPIError("the API answered 400", 400, "bad input, said the API"), 400,
         "bad input, said the API"),
        (EmbeddingAPIError("the API answered 401", 401, "Incorrect API key sk-..."), 502,
         "refused this deployment's credentials"),
        (EmbeddingResponseError("wrong count"), 502, "EmbeddingResponseError"),
        (EmbeddingServerError("the API answered 503", 503, "overloaded"), 503, "try again"),
        (EmbeddingQueueUnavailableError("down"), 503, "queue is unavailable"),
        (EmbeddingResultStoreUnavailableError("down"), 503, "queue is unavailable"),
        (EmbeddingResultTimeoutError("slow"), 503, "No embedding within 60 s"),
        (RuntimeError("revoked"), 502, "RuntimeError"),
    ],
)  # fmt: skip
def test_task_failures_map_to_openai_statuses(client, service, error, status, words) -> None:
    service.error = error
    body = _error(
        _post(client, {"input": "x", "model": MODEL}), status, "input" if status == 400 else None
    )
    assert words in body["message"]
    assert "sk-" not in body["message"]  # an upstream 401's message never reaches the caller


def test_models_lists_the_configured_model_behind_auth(client) -> None:
    assert client.get("/v1/models").status_code == 401
    body = client.get("/v1/models", headers=AUTH).json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"]) for m in body["data"]] == [(MODEL, "model")]


def test_healthz_is_200_with_redis_up_and_503_with_it_down(client, service) -> None:
    assert client.get("/healthz").json() == {
        "status": "ok", "redis": True, "workers": 2, "queue_depth": 0
    }  # fmt: skip
    service.health_report = Health(redis=False, workers=None, queue_depth=None)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


def test_unknown_routes_answer_in_openai_error_shape(client) -> None:
    assert _error(client.get("/v1/nothing", headers=AUTH), 404)["type"] == "invalid_request_error"


def test_the_openapi_docs_describe_the_embeddings_endpoint(client) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/embeddings"]["post"]
    assert (
        "input" in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )
    assert {"200", "400", "401", "413", "429", "503"} <= set(operation["responses"])


def test_the_service_is_closed_when_the_app_stops(service) -> None:
    with _client(service):
        assert not service.closed
    assert service.closed


# --- lanes: the X-Embeddings-Lane header, else service_tier, else interactive -------------


@pytest.mark.parametrize(
    ("headers", "body", "lane"),
    [
        ({}, {}, "interactive"),
        ({"X-Embeddings-Lane": "bulk"}, {}, "bulk"),
        ({"X-Embeddings-Lane": "interactive"}, {}, "interactive"),
        ({"x-embeddings-lane": " Bulk "}, {}, "bulk"),  # header names and tokens: any case
        ({}, {"service_tier": "flex"}, "bulk"),
        ({}, {"service_tier": "auto"}, "interactive"),
        ({}, {"service_tier": "default"}, "interactive"),
        ({}, {"service_tier": "priority"}, "interactive"),
        ({}, {"service_tier": None}, "interactive"),
        ({"X-Embeddings-Lane": "interactive"}, {"service_tier": "flex"}, "interactive"),
        ({"X-Embeddings-Lane": "bulk"}, {"service_tier": "priority"}, "bulk"),
    ],
    ids=[
        "default",
        "header bulk",
        "header interactive",
        "header any case",
        "flex",
        "auto",
        "default tier",
        "priority",
        "null tier",
        "header wins over flex",
        "header wins over priority",
    ],
)
def test_a_request_picks_its_lane_by_header_then_service_tier(
    client, service, headers, body, lane
) -> None:
    response = _post(client, {"input": ["a", "b"], "model": MODEL, **body}, {**AUTH, **headers})
    assert response.status_code == 200, response.text
    assert service.lanes == [lane]
    assert [len(texts) for texts, _ in service.embedded] == [2]


@pytest.mark.parametrize("tier", ["scale", "FLEX", "", 1, True, ["flex"], {"tier": "flex"}])
def test_an_unknown_service_tier_gets_openais_400_naming_the_parameter(
    client, service, tier
) -> None:
    error = _error(_post(client, {"input": "x", "model": MODEL, "service_tier": tier}), 400,
                   "service_tier")  # fmt: skip
    assert error["type"] == "invalid_request_error"
    assert "'auto', 'default', 'flex', 'priority'" in error["message"]
    assert service.embedded == []


@pytest.mark.parametrize("value", ["fast", "", "flex", "interactive,bulk"])
def test_an_unknown_lane_header_gets_a_400_naming_the_lanes(client, service, value) -> None:
    response = _post(client, {"input": "x", "model": MODEL}, {**AUTH, "X-Embeddings-Lane": value})
    error = _error(response, 400)
    assert "X-Embeddings-Lane header must be one of interactive, bulk" in error["message"]
    assert error["code"] == "invalid_lane"
    assert service.embedded == []


def test_a_long_bad_service_tier_is_quoted_cut_short(client) -> None:
    tier = "x" * 3_000
    error = _error(_post(client, {"input": "x", "model": MODEL, "service_tier": tier}), 400,
                   "service_tier")  # fmt: skip
    assert len(error["message"]) < 300


def test_a_bulk_request_is_bounded_by_the_bulk_lanes_queue(service) -> None:
    with _client(service, replace(SETTINGS, max_queue_depth=10)) as client:
        bulk = {**AUTH, "X-Embeddings-Lane": "bulk"}
        assert _post(client, {"input": "x", "model": MODEL}, bulk).status_code == 200
        service.depth = 10
        error = _error(_post(client, {"input": "x", "model": MODEL}, bulk), 429)
        assert "bulk lane holds 10 texts" in error["message"]
    assert service.depth_asked == ["bulk", "bulk"]
    assert service.lanes == ["bulk"]


def test_healthz_shows_each_lanes_depth_when_the_service_knows_them(client, service) -> None:
    service.health_report = Health(
        redis=True, workers=1, queue_depth=7, lane_depths={"interactive": 2, "bulk": 5}
    )
    assert client.get("/healthz").json() == {
        "status": "ok", "redis": True, "workers": 1, "queue_depth": 7,
        "lanes": {"interactive": 2, "bulk": 5},
    }  # fmt: skip


def test_the_openapi_docs_describe_the_lane_header_and_service_tier(client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/embeddings"]["post"]
    (header,) = [p for p in operation["parameters"] if p["name"] == "X-Embeddings-Lane"]
    assert header["in"] == "header" and header["required"] is False
    assert header["schema"]["enum"] == ["interactive", "bulk"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    tier = body["properties"]["service_tier"]
    assert {"auto", "default", "flex", "priority"} <= set(json.dumps(tier).split('"'))
    assert "bulk" in tier["description"]


def test_an_unknown_model_is_404_model_not_found_and_nothing_is_enqueued(client, service):
    error = _error(_post(client, {"input": "x", "model": "no-such-model"}), 404)
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "`no-such-model` does not exist" in error["message"]
    assert service.embedded == []


def test_gateway_models_are_served_and_listed_exactly(service) -> None:
    settings = replace(SETTINGS, models=("model-a", "model-b"))
    with _client(service, settings) as client:
        body = client.get("/v1/models", headers=AUTH).json()
        assert [m["id"] for m in body["data"]] == ["model-a", "model-b"]
        assert _post(client, {"input": "x", "model": "model-b"}).status_code == 200
        assert _error(_post(client, {"input": "x", "model": MODEL}), 404)["code"] == (
            "model_not_found"
        )
    assert service.embedded == [(["x"], "model-b")]


def test_an_upstream_404_is_404_model_not_found_not_a_bad_input(client, service) -> None:
    service.error = EmbeddingAPIError("the API answered 404", 404, "The model `m` does not exist")
    error = _error(_post(client, {"input": "x", "model": MODEL}), 404)
    assert error["code"] == "model_not_found"
    assert error["message"] == "The model `m` does not exist"


def test_equal_requests_get_equal_request_keys_and_a_header_makes_one_explicit(client, service):
    body = {"input": ["a", "b"], "model": MODEL}
    _post(client, body)
    _post(client, body)
    _post(client, {"input": ["a", "c"], "model": MODEL})
    _post(client, body, {**AUTH, "Idempotency-Key": "order-17"})
    _post(client, {"input": ["other"], "model": MODEL}, {**AUTH, "Idempotency-Key": "order-17"})
    first, again, other, named, named_other = service.request_keys
    assert first is not None and other is not None and named is not None
    assert named_other is not None
    assert first == again and first.redis_key != other.redis_key
    assert not first.explicit and named.explicit
    # The header names the record; the body's fingerprint tells a reuse with another body.
    assert named.redis_key == named_other.redis_key
    assert named.fingerprint != named_other.fingerprint


def test_another_api_key_never_shares_a_record(client, service) -> None:
    body = {"input": "same text", "model": MODEL}
    _post(client, body)
    _post(client, body, {"Authorization": f"Bearer {OTHER_KEY}"})
    mine, theirs = service.request_keys
    assert mine is not None and theirs is not None
    assert mine.redis_key != theirs.redis_key


@pytest.mark.parametrize("header", ["", "   ", "k" * 256])
def test_an_empty_or_overlong_idempotency_key_is_a_400(client, service, header) -> None:
    response = _post(client, {"input": "x", "model": MODEL}, {**AUTH, "Idempotency-Key": header})
    assert _error(response, 400)["code"] == "invalid_idempotency_key"
    assert service.embedded == []


def test_a_timeout_with_no_worker_up_says_so(client, service) -> None:
    service.error = EmbeddingResultTimeoutError("slow")
    service.health_report = Health(redis=True, workers=0, queue_depth=4, lane_depths={
        "interactive": 4, "bulk": 0})  # fmt: skip
    error = _error(_post(client, {"input": "x", "model": MODEL}), 503)
    assert error["code"] == "no_workers"
    assert "no worker is up" in error["message"]


def test_a_large_request_gets_its_estimated_time_and_a_warning_over_the_timeout(
    service, caplog
) -> None:
    service.health_report = Health(redis=True, workers=1, queue_depth=84, lane_depths={
        "interactive": 84, "bulk": 0})  # fmt: skip
    settings = replace(SETTINGS, max_body_bytes=1 << 20, request_timeout_s=1.0)
    texts = [f"t{i}" for i in range(256)]
    with _client(service, settings) as client, caplog.at_level("WARNING", "gateway.app"):
        response = _post(client, {"input": texts, "model": MODEL})
    assert response.status_code == 200
    # No throughput measured yet: 170 texts/s for the one worker, 84 queued ahead.
    assert response.headers["X-Embeddings-Estimated-Seconds"] == "2.0"
    assert "a request of 256 texts needs about 2 s" in caplog.text


def test_a_small_request_is_not_estimated(client, service) -> None:
    response = _post(client, {"input": "x", "model": MODEL})
    assert "X-Embeddings-Estimated-Seconds" not in response.headers


def test_the_request_schema_carries_the_limits_the_gateway_enforces(client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/embeddings"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"input", "model"}
    assert body["properties"]["model"]["enum"] == [MODEL]
    text, texts, tokens, token_lists = body["properties"]["input"]["anyOf"]
    assert (text["type"], text["minLength"], text["maxLength"]) == ("string", 1, 500)
    assert (texts["minItems"], texts["maxItems"], texts["items"]) == (1, 2048, text)
    assert tokens["items"] == {"type": "integer", "minimum": 0}
    assert (token_lists["minItems"], token_lists["maxItems"]) == (1, 2048)
    assert token_lists["items"] == tokens
    assert {"200", "400", "401", "404", "413", "422", "429", "503"} <= set(operation["responses"])
    assert operation["security"] == [{"bearerAuth": []}]
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "One of GATEWAY_API_KEYS."
    }  # fmt: skip
    models = schema["paths"]["/v1/models"]["get"]
    assert models["security"] == [{"bearerAuth": []}] and "401" in models["responses"]


@pytest.mark.parametrize(
    ("text", "accepted"),
    [("ok", True), (" x ", True), ("", False), ("  \t\n", False), ("a\x00b", False)],
)
def test_the_text_pattern_matches_what_validation_accepts(text: str, accepted: bool) -> None:
    assert bool(re.search(TEXT_PATTERN, text)) is accepted


def test_without_keys_the_schema_asks_for_no_bearer(service) -> None:
    settings = GatewaySettings(allow_no_auth=True)
    with _client(service, settings) as client:
        schema = client.get("/openapi.json").json()
    assert "security" not in schema["paths"]["/v1/embeddings"]["post"]
    assert "securitySchemes" not in schema.get("components", {})


def test_docs_load_swagger_ui_from_the_gateway_itself_not_a_cdn(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    scripts = re.findall(r'src="([^"]+\.js)"', page.text)
    assert scripts and all(src.startswith("/") for src in scripts)
    for src in scripts:
        asset = client.get(src)
        assert asset.status_code == 200 and len(asset.content) > 100_000
