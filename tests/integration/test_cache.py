"""Never pay twice, end to end: duplicates share an input and repeats come from the cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

import producers
from stubapi.vectors import vector_for
from tests.integration.harness import REPO_ROOT, TEST_REDIS_URL

pytestmark = pytest.mark.integration

DIMS = 16
TEXTS = [f"repeated query {i}: where is my order {i % 13}" for i in range(400)]


def _cache_url() -> str:
    # A database of its own, 8 below the test database's, so parallel runs on other test
    # databases never share it.
    parts = urlsplit(TEST_REDIS_URL)
    database = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(database - 8) % 16}"))


@pytest.fixture
def cache_url() -> Iterator[str]:
    url = _cache_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def _check(results: list, texts: list[str]) -> None:
    vectors = [result.get(timeout=120) for result in results]
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(vector_for(text, DIMS), rel=1e-6, abs=1e-7)


def test_each_text_enqueued_twice_at_once_reaches_the_api_about_once(start_worker, stub, app):
    stub.set_latency_ms(50)
    twice = [text for text in TEXTS for _ in range(2)]
    results = producers.enqueue_texts(twice, app=app)  # a backlog: the copies wait together
    start_worker(stub.base_url)
    _check(results, twice)
    inputs = stub.stats()["total_inputs"]
    print(f"\n{len(twice)} texts, {len(TEXTS)} distinct: {inputs} API inputs")
    assert inputs <= len(TEXTS) * 1.05


def test_the_same_texts_again_come_from_the_cache_with_no_input(start_worker, stub, app, cache_url):
    start_worker(stub.base_url, {"EMBEDDINGS_CACHE_URL": cache_url})
    _check(producers.enqueue_texts(TEXTS, app=app), TEXTS)
    assert stub.stats()["total_inputs"] == len(TEXTS)
    stub.reset()
    _check(producers.enqueue_texts(TEXTS, app=app), TEXTS)
    assert stub.stats()["total_inputs"] == 0


def test_another_model_is_never_served_the_first_models_vector(start_worker, stub, app, cache_url):
    start_worker(stub.base_url, {"EMBEDDINGS_CACHE_URL": cache_url})
    text = TEXTS[0]
    small = producers.embed_text(text, app=app, timeout=60)
    large = producers.embed_text(text, model="text-embedding-3-large", app=app, timeout=60)
    assert small == pytest.approx(vector_for(text, DIMS), rel=1e-6, abs=1e-7)
    assert large == pytest.approx(vector_for(text, DIMS), rel=1e-6, abs=1e-7)
    assert stub.stats()["total_inputs"] == 2  # the second model paid for its own vector


def test_with_the_cache_down_every_text_still_succeeds(start_worker, stub, app):
    worker = start_worker(stub.base_url, {"EMBEDDINGS_CACHE_URL": "redis://127.0.0.1:1/0"})
    _check(producers.enqueue_texts(TEXTS[:80], app=app), TEXTS[:80])
    assert stub.stats()["total_inputs"] == 80
    assert worker.log().count("vector cache is unreachable") == 1


def test_a_cache_in_the_brokers_database_is_refused_at_start(start_worker, stub, app):
    with pytest.raises(RuntimeError, match="EMBEDDINGS_CACHE_IN_BROKER_DB"):
        start_worker(stub.base_url, {"EMBEDDINGS_CACHE_URL": TEST_REDIS_URL})


def test_embed_file_reads_lines_embedded_before_from_the_cache(
    start_worker, stub, app, cache_url, tmp_path
):
    start_worker(stub.base_url, {"EMBEDDINGS_CACHE_URL": cache_url})
    source = tmp_path / "queries.txt"
    source.write_text("\n".join(TEXTS[:30]) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    # The same provider, model and dimensions as the workers: the cache key depends on them.
    env.update(
        REDIS_URL=TEST_REDIS_URL,
        EMBEDDINGS_CACHE_URL=cache_url,
        EMBEDDINGS_BASE_URL=stub.base_url,
        EMBEDDINGS_DIMENSIONS=str(DIMS),
    )

    def run(output: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "producers.cli", str(source), "-o", str(tmp_path / output),
                "--no-progress", "--timeout", "60"]  # fmt: skip
        return subprocess.run(
            argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
        )

    first = run("first.jsonl")
    assert first.returncode == 0, first.stderr
    assert stub.stats()["total_inputs"] == 30
    second = run("second.jsonl")
    assert second.returncode == 0, second.stderr
    assert stub.stats()["total_inputs"] == 30  # nothing paid twice
    assert re.search(r"│\s*30\s*│\s*30\s*│\s*0\s*│\s*0\s*│\s*30\s*│", second.stderr), second.stderr
    records = [json.loads(line) for line in (tmp_path / "second.jsonl").read_text().splitlines()]
    for text, record in zip(TEXTS[:30], records, strict=True):
        assert record["embedding"] == pytest.approx(vector_for(text, DIMS), rel=1e-6, abs=1e-7)
