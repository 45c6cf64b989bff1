"""The gateway's tokens: token arrays decoded with the model's encoding, token limits before
enqueue, and exact ``usage`` (issue #23). The queue is faked as in test_gateway."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway import GatewaySettings, create_app
from gateway.parsing import parse_request
from producers import client as client_module
from tests.overlong import NUMBERS_TOKENS, numbers_text
from tests.unit.test_gateway import FakeService, vector_for
from worker.settings import Settings
from worker.tokens import CL100K_BASE, decode_tokens, token_counter

MODEL = "text-embedding-3-small"
# Served models (GATEWAY_MODELS): the default, a deployment named in EMBEDDINGS_TOKENIZER,
# and another provider's model whose encoding is unknown.
SETTINGS = GatewaySettings(
    api_keys=("gw-key-tokens-0123456789",),
    max_body_bytes=1 << 21,
    models=(MODEL, "my-deployment", "BAAI/bge-m3"),
)
HEADERS = {"Authorization": "Bearer gw-key-tokens-0123456789"}


def _encode(text: str) -> list[int]:
    import tiktoken  # the worker's own encoding object, as a client's tiktoken would encode

    from worker.tokens import _encoding

    encoding: tiktoken.Encoding = _encoding(CL100K_BASE)
    return encoding.encode_ordinary(text)


@pytest.fixture(autouse=True)
def producer_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    # What the gateway reads with the producers: each model's encoding and the token limits.
    settings = Settings(tokenizer="my-deployment=cl100k_base")
    monkeypatch.setattr(client_module, "_settings", settings)
    return settings


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def client(service: FakeService) -> Iterator[TestClient]:
    app = create_app(SETTINGS, lambda: service)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _post(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/v1/embeddings", json=body, headers=HEADERS)


def _error(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "input")
    return error


TEXTS = ["The quick brown fox", "jumps over the lazy dog.", "お誕生日おめでとう 🎂"]


def test_a_list_of_token_arrays_is_embedded_as_the_texts_they_encode(client, service) -> None:
    arrays = [_encode(text) for text in TEXTS]
    body = _post(client, {"input": arrays, "model": MODEL, "encoding_format": "float"}).json()
    assert service.embedded == [(TEXTS, MODEL)]
    assert [d["embedding"] for d in body["data"]] == [vector_for(t) for t in TEXTS]
    tokens = sum(map(len, arrays))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_one_token_array_is_one_input(client, service) -> None:
    tokens = _encode(TEXTS[2])
    body = _post(client, {"input": tokens, "model": MODEL}).json()
    assert service.embedded == [([TEXTS[2]], MODEL)]
    assert len(body["data"]) == 1
    assert body["usage"]["prompt_tokens"] == len(tokens) == token_counter(CL100K_BASE)(TEXTS[2])


def test_a_deployment_named_in_the_tokenizer_setting_decodes_with_its_encoding(client, service):
    assert _post(client, {"input": [_encode("hello world")], "model": "my-deployment"}).is_success
    assert service.embedded == [(["hello world"], "my-deployment")]


def test_text_usage_is_the_exact_count_in_the_models_encoding(client) -> None:
    body = _post(client, {"input": TEXTS, "model": MODEL}).json()
    tokens = sum(len(_encode(t)) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_text_usage_of_a_model_of_unknown_encoding_is_the_estimate(client) -> None:
    body = _post(client, {"input": ["abcd", "日本"], "model": "BAAI/bge-m3"}).json()
    assert body["usage"]["prompt_tokens"] == 2 + 3  # one per two UTF-8 bytes, rounded up


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": [[15339], []]}, "token array at index 1 is empty"),
        (
            {"input": [[15339], [1, 2, 3, 100257]]},
            "token array at index 1: token id 100257 at offset 3 is not in cl100k_base "
            "(ids 0 to 100255)",
        ),
        ({"input": [15339, -1]}, "token id -1 at offset 1 is not in cl100k_base"),
        ({"input": [[15339], "text"]}, "input at index 1 is not a token array"),
        ({"input": ["text", [15339]]}, "input at index 0 is not a token array"),
        ({"input": [[15339, 2.5]]}, "token array at index 0 holds a float at offset 1"),
        ({"input": [[15339, True]]}, "token array at index 0 holds a bool at offset 1"),
        ({"input": [[220, 220]]}, "token array at index 0: text is whitespace-only"),
        ({"input": [[15339, 0], [188]]}, "token array at index 1: text contains a NUL"),
        ({"input": [[15339]] * 2049}, "max number of inputs is 2048"),
    ],
)
def test_a_bad_token_array_gets_400_naming_it_and_nothing_is_enqueued(
    client, service, body, words
) -> None:
    error = _error(_post(client, {**body, "model": MODEL}))
    assert words in error["message"]
    assert service.embedded == []


def test_token_arrays_of_a_model_of_unknown_encoding_get_a_clear_400(client, service) -> None:
    error = _error(_post(client, {"input": [[15339, 1917]], "model": "BAAI/bge-m3"}))
    assert error["code"] == "token_arrays_unsupported"
    assert "token encoding of model 'BAAI/bge-m3' is unknown" in error["message"]
    assert "EMBEDDINGS_TOKENIZER" in error["message"]
    assert service.embedded == []


def test_a_token_array_over_the_limit_is_refused_naming_index_count_and_limit(client, service):
    error = _error(_post(client, {"input": [[15339], [15339] * 8193], "model": MODEL}))
    assert error["message"] == (
        "'input' is invalid: token array at index 1 has 8193 tokens (cl100k_base, "
        "text-embedding-3-small); the limit is 8192 tokens per input"
    )
    assert _post(client, {"input": [64] * 8192, "model": MODEL}).is_success  # "a" × 8,192
    assert [len(texts) for texts, _ in service.embedded] == [1]


def test_the_issues_over_long_text_is_refused_naming_index_count_and_limit(client, service):
    error = _error(_post(client, {"input": ["fine", numbers_text()], "model": MODEL}))
    assert error["message"] == (
        f"'input' is invalid: text at index 1 has {NUMBERS_TOKENS} tokens (cl100k_base, "
        "text-embedding-3-small); the limit is 8192 tokens per input"
    )
    assert service.embedded == []


def test_a_request_over_the_per_request_tokens_is_refused(
    client, service, producer_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = Settings(max_request_tokens=1000, batch_size=1)
    monkeypatch.setattr(client_module, "_settings", small)
    error = _error(_post(client, {"input": [[15339] * 600, [15339] * 401], "model": MODEL}))
    assert "the inputs have 1001 tokens in all" in error["message"]
    assert "the limit is 1000 tokens per request" in error["message"]
    assert _post(client, {"input": [[15339] * 600, [15339] * 400], "model": MODEL}).is_success
    assert [len(texts) for texts, _ in service.embedded] == [2]


def test_a_whole_texts_tokens_decode_to_that_text_and_back() -> None:
    # Why decoding gives the text's own vector: cl100k_base round-trips whole texts.
    for text in [*TEXTS, numbers_text(), "  leading spaces\n\ttabs\r\n", "emoji 👍🏽🏳️‍🌈 mix"]:
        tokens = _encode(text)
        assert decode_tokens(tokens, CL100K_BASE) == text
        assert _encode(decode_tokens(tokens, CL100K_BASE)) == tokens


def test_ids_cut_inside_a_character_decode_with_a_replacement_character() -> None:
    tokens = _encode("🎂")
    assert len(tokens) > 1  # one emoji, several byte-level tokens
    assert decode_tokens(tokens[:-1], CL100K_BASE) == "\ufffd"


def test_parse_request_reads_the_settings_it_is_given() -> None:
    body = b'{"model": "m", "input": [[15339, 1917]]}'
    parsed = parse_request(body, max_text_chars=100, settings=Settings(tokenizer="cl100k_base"))
    assert (parsed.texts, parsed.prompt_tokens) == (["hello world"], 2)


def test_a_non_canonical_array_is_embedded_as_its_text_and_charged_its_length(client, service):
    # "a" and "b" are ids 64 and 65, "ab" is one id: a tokenizer would never send [64, 65].
    assert _encode("ab") != [64, 65]
    body = _post(client, {"input": [64, 65], "model": MODEL}).json()
    assert service.embedded == [(["ab"], MODEL)]
    assert body["usage"]["prompt_tokens"] == 2  # what OpenAI would charge for two ids
