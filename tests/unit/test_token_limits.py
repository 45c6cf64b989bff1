"""Token limits before enqueue (issue #23): one check in ``worker.validation``, used by the
sync and async producers and by embed-file's records; the gateway's is in test_gateway."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import producers
import producers.aio as aio
from producers import AsyncProducer
from producers import client as client_module
from producers.records import read_items
from tests.overlong import NUMBERS_CHARS, NUMBERS_TOKENS, numbers_text
from worker import tokens, validation
from worker.celery_ext import bulk_publish
from worker.errors import EmbeddingConfigError, EmbeddingInputError
from worker.settings import DEFAULT_MAX_TEXT_CHARS, Settings
from worker.tokens import CL100K_BASE, token_counter
from worker.validation import (
    TokenLimit,
    check_request_tokens,
    token_limit,
    validate_text,
    validate_texts,
)

OVERLONG = numbers_text()
OVER_MESSAGE = (
    f"has {NUMBERS_TOKENS} tokens (cl100k_base, text-embedding-3-small); "
    "the limit is 8192 tokens per input"
)


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def _limit(**settings: Any) -> TokenLimit:
    limit = token_limit(Settings(**settings), None)
    assert limit is not None
    return limit


def test_the_issues_text_is_within_the_characters_and_over_the_tokens() -> None:
    assert len(OVERLONG) == NUMBERS_CHARS < DEFAULT_MAX_TEXT_CHARS
    assert token_counter(CL100K_BASE)(OVERLONG) == NUMBERS_TOKENS > 8192


def test_a_text_over_the_models_tokens_is_refused_naming_index_count_and_limit() -> None:
    with pytest.raises(EmbeddingInputError) as info:
        validate_texts(["fine", OVERLONG], max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=_limit())
    assert str(info.value) == f"text at index 1 {OVER_MESSAGE}"


def test_exactly_the_limit_is_accepted_and_one_token_more_refused() -> None:
    at_limit = " a" * 8192  # " a" is one cl100k_base token
    assert token_counter(CL100K_BASE)(at_limit) == 8192
    assert validate_text(at_limit, max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=_limit()) is at_limit
    with pytest.raises(EmbeddingInputError, match="has 8193 tokens"):
        validate_text("a" + at_limit, max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=_limit())


def test_no_cl100k_base_token_is_shorter_than_a_byte() -> None:
    # The pre-check's bound, tokens <= UTF-8 bytes, on the texts most likely to break it:
    # mixed scripts, emoji with modifiers, digits, lone combining marks.
    alphabet = "ab 0123456789 .,!\n\té中日本語한🙂👍🏽🏳️‍🌈\u0301\u200b\u00a0"
    rng = random.Random(8192)
    count = token_counter(CL100K_BASE)
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 300)))
        assert count(text) <= len(text.encode("utf-8")), text
    for token in range(0, tokens.vocabulary_size(CL100K_BASE) or 0, 97):
        assert len(tokens._encoding(CL100K_BASE).decode_single_token_bytes(token)) >= 1


@pytest.mark.parametrize(
    "text",
    [
        "x" * 8192,  # ASCII: one byte a character
        "🙂" * 2048,  # four bytes a character, 8,192 bytes
        "é" * 4096,
    ],
)
def test_a_text_of_at_most_the_limits_bytes_is_never_tokenized(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(encoding: str) -> Any:
        raise AssertionError("counted a text whose bytes are within the limit")

    monkeypatch.setattr(validation, "token_counter", refuse)
    assert validate_text(text, max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=_limit()) is text


def test_a_text_over_the_limits_bytes_is_counted_and_may_pass() -> None:
    prose = "The quick brown fox jumps over the lazy dog. " * 400  # 18,000 bytes, 4,001 tokens
    assert len(prose.encode()) > 8192
    assert validate_text(prose, max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=_limit()) is prose


def test_a_model_of_unknown_encoding_is_held_to_the_estimate_and_says_so() -> None:
    limit = _limit(model="BAAI/bge-m3")
    assert limit.encoding == "estimate"
    prose = "word " * 3500  # 17,500 bytes: an estimate of 8,750 tokens
    with pytest.raises(EmbeddingInputError) as info:
        validate_text(prose, max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=limit)
    assert str(info.value) == (
        "text has 8750 tokens (estimated at one per two UTF-8 bytes: the tokenizer of "
        "'BAAI/bge-m3' is unknown (EMBEDDINGS_TOKENIZER names it)); the limit is 8192 "
        "tokens per input"
    )


def test_a_raised_batch_size_shares_the_per_request_limit_among_a_calls_texts() -> None:
    assert _limit(batch_size=36).max_tokens == 8192  # 36 x 8,192 fits 300,000
    limit = _limit(batch_size=64)
    assert limit.max_tokens == 300_000 // 64 == 4687
    text = " a" * 4688
    with pytest.raises(EmbeddingInputError) as info:
        validate_text(text, max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=limit)
    assert str(info.value) == (
        "text has 4688 tokens (cl100k_base, text-embedding-3-small); the limit is 4687 tokens "
        "per input: EMBEDDINGS_MAX_REQUEST_TOKENS=300000 shared by EMBEDDINGS_BATCH_SIZE=64 "
        "texts a call"
    )
    assert _limit(batch_size=64, max_request_tokens=0).max_tokens == 8192


def test_a_requests_total_is_held_to_the_per_request_limit() -> None:
    limit = _limit(max_request_tokens=1000)
    check_request_tokens(1000, limit)
    with pytest.raises(EmbeddingInputError, match=r"1001 tokens in all .* 1000 tokens per request"):
        check_request_tokens(1001, limit)


def test_zero_turns_the_token_check_off_and_a_negative_limit_is_refused() -> None:
    assert token_limit(Settings(max_input_tokens=0), None) is None
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_MAX_INPUT_TOKENS"):
        Settings.from_env({"EMBEDDINGS_MAX_INPUT_TOKENS": "-1"})
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_MAX_REQUEST_TOKENS"):
        Settings(max_request_tokens=-5)
    assert token_limit(Settings.from_env({"EMBEDDINGS_MAX_INPUT_TOKENS": "100"}), None) == (
        TokenLimit("text-embedding-3-small", CL100K_BASE, 100, 300_000)
    )


def test_the_model_named_decides_the_encoding() -> None:
    settings = Settings(tokenizer="my-azure-deployment=cl100k_base")
    assert token_limit(settings, "my-azure-deployment") == TokenLimit(
        "my-azure-deployment", CL100K_BASE, 8192, 300_000
    )
    limit = token_limit(settings, "nomic-embed-text")
    assert limit is not None and limit.encoding == "estimate"


# The producers, with the publishing replaced: nothing reaches a broker.


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    configured = Settings()
    monkeypatch.setattr(client_module, "_settings", configured)
    return configured


@pytest.fixture
def sync_published(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sent: list[Any] = []

    def publish(app: Celery, name: str, calls: Any, **kwargs: Any) -> Any:
        sent.extend(calls)
        yield from ()

    def send(*args: Any, **kwargs: Any) -> Any:
        sent.append(args)
        raise AssertionError("a text over the limit was sent")

    monkeypatch.setattr(bulk_publish, "publish_chunks", publish)
    monkeypatch.setattr(client_module, "_send", send)
    return sent


@pytest.mark.usefixtures("settings")
def test_the_sync_producers_refuse_it_before_anything_is_enqueued(sync_published) -> None:
    with pytest.raises(EmbeddingInputError, match=_exactly(f"text {OVER_MESSAGE}")):
        producers.enqueue_text(OVERLONG)
    with pytest.raises(EmbeddingInputError, match=_exactly(f"text at index 1 {OVER_MESSAGE}")):
        producers.enqueue_texts(["fine", OVERLONG])
    with pytest.raises(EmbeddingInputError, match=_exactly(f"text at index 2 {OVER_MESSAGE}")):
        producers.embed_texts(["fine", "also fine", OVERLONG], timeout=1)
    assert sync_published == []


@pytest.mark.usefixtures("settings")
def test_the_sync_producers_count_in_the_named_models_encoding(sync_published) -> None:
    with pytest.raises(EmbeddingInputError, match="estimated at one per two UTF-8 bytes"):
        producers.enqueue_texts(["word " * 3500], model="nomic-embed-text")
    assert sync_published == []


@pytest.mark.usefixtures("settings")
def test_the_async_producer_refuses_it_before_anything_is_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    published: list[Any] = []
    monkeypatch.setattr(aio, "_publish", lambda *args: published.append(args))
    monkeypatch.setattr(aio, "_publish_chunk", lambda *args: published.append(args))

    async def main() -> None:
        producer = AsyncProducer()
        try:
            with pytest.raises(EmbeddingInputError, match=_exactly(f"text {OVER_MESSAGE}")):
                await producer.enqueue_text(OVERLONG)
            with pytest.raises(
                EmbeddingInputError, match=_exactly(f"text at index 1 {OVER_MESSAGE}")
            ):
                await producer.enqueue_texts(["fine", OVERLONG])
            with pytest.raises(EmbeddingInputError, match=_exactly(f"text {OVER_MESSAGE}")):
                await producer.embed_text(OVERLONG, timeout=1)
            with pytest.raises(
                EmbeddingInputError, match=_exactly(f"text at index 1 {OVER_MESSAGE}")
            ):
                await producer.embed_texts(["fine", OVERLONG], timeout=1)
        finally:
            await producer.aclose()

    asyncio.run(main())
    assert published == []


def test_embed_files_record_over_the_limit_is_an_error_line_and_the_rest_go_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.txt"
    path.write_text(f"first\n{OVERLONG}\nthird\n", encoding="utf-8")
    items = list(read_items(path, "lines", max_chars=DEFAULT_MAX_TEXT_CHARS, tokens=_limit()))
    assert [(i.line, i.text) for i in items if i.error is None] == [(1, "first"), (3, "third")]
    assert [(i.line, i.error) for i in items if i.error] == [(2, f"line 2: text {OVER_MESSAGE}")]


def test_embed_file_writes_an_error_line_for_it_and_embeds_the_rest(tmp_path: Path) -> None:
    from producers import cli
    from tests.unit.stream_fakes import FakeStream

    source = tmp_path / "in.jsonl"
    records = [
        {"id": "a", "text": "first"},
        {"id": "b", "text": OVERLONG},
        {"id": "c", "text": "x"},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    stream = FakeStream()
    assert cli.main([str(source), "-o", str(output), "--no-progress"], stream=stream) == 1
    assert stream.texts == ["first", "x"]  # the over-long text never reached the queue
    written = {r["id"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert written["b"] == {"id": "b", "line": 2, "error": f"line 2: text {OVER_MESSAGE}"}
    assert "embedding" in written["a"] and "embedding" in written["c"]
