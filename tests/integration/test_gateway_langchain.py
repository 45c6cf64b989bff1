"""LangChain's ``OpenAIEmbeddings`` at its defaults (token arrays) against the gateway, a
real worker and the stub, through ``examples/langchain_gateway.py``, with no network."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from stubapi.vectors import vector_for
from tests.integration.faultkit import DIMS, expected
from tests.integration.test_gateway_tokens import GATEWAY_KEY, MODEL, TEXTS, encode
from tests.integration.test_gateway_tokens import gateway as gateway  # the fixture, here too
from tests.overlong import numbers_text
from worker.tokens import CL100K_BASE

pytestmark = pytest.mark.integration


@pytest.fixture
def offline_tiktoken(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken's cache seeded from the project's file, and any download an error."""
    import tiktoken.load
    import tiktoken.registry

    from examples.langchain_gateway import seed_tiktoken_cache

    def no_download(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # none loaded before: read the cache
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    seed_tiktoken_cache(tmp_path / "tiktoken")


@pytest.mark.usefixtures("offline_tiktoken")
def test_langchains_defaults_send_token_arrays_and_get_the_texts_vectors(
    start_worker, stub, gateway
) -> None:
    import httpx

    from examples.langchain_gateway import embeddings_for

    start_worker(stub.base_url)
    sent: list[Any] = []

    def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content)["input"])

    with httpx.Client(event_hooks={"request": [record]}) as recording:
        embeddings = embeddings_for(gateway.base_url, GATEWAY_KEY, MODEL, http_client=recording)
        assert embeddings.check_embedding_ctx_length  # LangChain's default, unchanged
        vectors = embeddings.embed_documents(TEXTS)
        query = embeddings.embed_query(TEXTS[0])
    assert vectors == [expected(text) for text in TEXTS]
    assert query == expected(TEXTS[0])
    assert sent == [[encode(text) for text in TEXTS], [encode(TEXTS[0])]]


@pytest.mark.usefixtures("offline_tiktoken")
def test_langchain_cuts_a_text_over_8191_tokens_and_the_gateway_embeds_each_piece(
    start_worker, stub, gateway
) -> None:
    import httpx

    from examples.langchain_gateway import embeddings_for
    from worker.tokens import decode_tokens

    start_worker(stub.base_url)
    text = numbers_text()  # 11,713 tokens: the gateway refuses it as text (above)
    with httpx.Client() as http:
        embeddings = embeddings_for(gateway.base_url, GATEWAY_KEY, MODEL, http_client=http)
        vector = embeddings.embed_documents([text])[0]
    tokens = encode(text)
    pieces = [tokens[:8191], tokens[8191:]]  # LangChain's embedding_ctx_length
    # LangChain averages the pieces' vectors weighted by their tokens, then normalises.
    summed = [
        sum(len(piece) * x for piece, x in zip(pieces, xs, strict=True))
        for xs in zip(
            *(vector_for(decode_tokens(p, CL100K_BASE), DIMS) for p in pieces), strict=True
        )
    ]
    norm = math.hypot(*summed)
    assert vector == pytest.approx([x / norm for x in summed], rel=1e-5, abs=1e-6)


@pytest.mark.usefixtures("offline_tiktoken")
def test_the_langchain_example_runs_against_the_gateway(
    start_worker, stub, gateway, capsys
) -> None:
    from examples import langchain_gateway

    start_worker(stub.base_url)
    argv = ["--base-url", gateway.base_url, "--api-key", GATEWAY_KEY, "--model", MODEL]
    assert langchain_gateway.main(argv) == 0
    out = capsys.readouterr().out
    assert f"3 documents, {DIMS} dimensions" in out
    assert all(document in out for document in langchain_gateway.DOCUMENTS)
