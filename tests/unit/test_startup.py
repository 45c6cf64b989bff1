"""A worker with no API key refuses to start, unless its API is a local server; it loads its
token encoding before its first text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import worker.tokens as tokens
from devstack import REPO_ROOT
from worker.errors import EmbeddingConfigError
from worker.settings import Settings
from worker.startup import check_worker_settings, is_local_base_url, require_api_key


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8900/v1",
        "http://api.localhost/v1",
        "http://127.0.0.1:8900/v1",
        "http://127.8.9.10/v1",
        "http://[::1]:8080/v1",
        "http://stubapi:8900/v1",  # a compose service
        "http://TEI/v1",
    ],
)
def test_loopback_and_one_label_hosts_are_local(url: str) -> None:
    assert is_local_base_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "http://10.0.0.5:8080/v1",  # a private address can still be someone else's server
        "http://embeddings.internal/v1",
        "http://[2001:db8::1]/v1",
        "http:///v1",
    ],
)
def test_dotted_names_and_other_addresses_are_not_local(url: str) -> None:
    assert not is_local_base_url(url)


def test_an_empty_key_for_a_remote_api_fails_naming_the_variable_and_the_host() -> None:
    with pytest.raises(EmbeddingConfigError, match=r"^EMBEDDINGS_API_KEY is empty.*api\.openai"):
        require_api_key(Settings(api_key=""))


def test_a_key_or_a_local_server_passes() -> None:
    require_api_key(Settings(api_key="sk-x"))
    require_api_key(Settings(api_key="", base_url="http://stubapi:8900/v1"))


def test_the_worker_start_check_exits_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EMBEDDINGS_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EMBEDDINGS_BASE_URL", "https://api.openai.com/v1")
    with pytest.raises(SystemExit, match=r"^worker not started: EMBEDDINGS_API_KEY is empty"):
        check_worker_settings()
    monkeypatch.setenv("EMBEDDINGS_BASE_URL", "http://127.0.0.1:8900/v1")
    check_worker_settings()  # a local stub needs no key


def test_the_worker_start_loads_the_models_token_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_counters", {tokens.ESTIMATE: tokens.estimate_tokens})
    monkeypatch.setenv("EMBEDDINGS_BASE_URL", "http://127.0.0.1:8900/v1")
    check_worker_settings()
    counter = tokens.loaded_counter(tokens.CL100K_BASE)  # no waiting: loaded already
    assert counter is not None
    assert counter("hello world") == 2


def test_a_damaged_encoding_file_stops_the_worker_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tokens, "_counters", {tokens.ESTIMATE: tokens.estimate_tokens})
    monkeypatch.setattr(tokens, "_CL100K_SHA256", "0" * 64)
    monkeypatch.setenv("EMBEDDINGS_BASE_URL", "http://127.0.0.1:8900/v1")
    with pytest.raises(SystemExit, match=r"^worker not started: .*cl100k_base.tiktoken is damaged"):
        check_worker_settings()
    monkeypatch.setenv("EMBEDDINGS_TOKENIZER", "estimate")  # a provider counted by the estimate
    check_worker_settings()


def test_celery_worker_refuses_to_start_without_a_key_for_a_remote_api() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("EMBEDDINGS_API_KEY", "OPENAI_API_KEY")}
    # Nothing listens there: the check must stop the worker before it connects.
    env.update(EMBEDDINGS_BASE_URL="https://api.openai.com/v1", REDIS_URL="redis://127.0.0.1:1/0")
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("worker not started: EMBEDDINGS_API_KEY is empty")
    assert "Traceback" not in done.stderr
