"""``worker.tokens``: exact cl100k_base counts offline, the estimate for unknown models, and
``EMBEDDINGS_TOKENIZER`` choosing between them per model."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

import worker.tokens as tokens
from devstack import REPO_ROOT
from worker.errors import EmbeddingConfigError
from worker.settings import Settings
from worker.tokens import CL100K_BASE, ESTIMATE, count_tokens, estimate_tokens, token_counter


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello world", 2),
        # OpenAI's cookbook ("How to count tokens with tiktoken") gives these for cl100k_base.
        ("tiktoken is great!", 6),
        ("antidisestablishmentarianism", 6),
        ("2 + 2 = 4", 7),
        ("お誕生日おめでとう", 9),
        ("The quick brown fox jumps over the lazy dog", 9),
        ("", 0),
    ],
)
def test_cl100k_base_counts_known_strings_exactly(text: str, expected: int) -> None:
    assert token_counter(CL100K_BASE)(text) == expected


def test_cl100k_base_counts_the_sample_texts_as_an_independent_tokenizer_does() -> None:
    # 30,790: bpe-openai 0.1.4 (GitHub's Rust BPE, its own copy of the encoding) counts the
    # same 2,000 lines so, one by one (docs/design.md, "Exact tokens").
    lines = (REPO_ROOT / "samples" / "texts.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2000
    assert count_tokens(lines, CL100K_BASE) == 30_790


def test_text_that_names_a_special_token_counts_as_plain_text() -> None:
    # The API embeds "<|endoftext|>" in a text as the characters it is, not as one token.
    assert token_counter(CL100K_BASE)("<|endoftext|>") > 1


def test_a_lone_surrogate_is_counted_not_raised() -> None:
    assert token_counter(CL100K_BASE)("a\ud800b") >= 2


def test_the_estimate_is_one_token_per_two_utf8_bytes_and_at_least_one() -> None:
    assert estimate_tokens("a") == 1
    assert estimate_tokens("abcd") == 2
    assert estimate_tokens("日本") == 3  # six bytes
    assert count_tokens(["abcd", "a"], ESTIMATE) == 3


def test_an_unknown_encoding_is_refused_naming_it() -> None:
    with pytest.raises(EmbeddingConfigError, match="o200k_base"):
        token_counter("o200k_base")


def test_a_damaged_encoding_file_is_refused_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_CL100K_SHA256", "0" * 64)
    with pytest.raises(EmbeddingConfigError, match="damaged"):
        tokens._load_cl100k()


@pytest.fixture
def unloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as if it had not loaded cl100k_base yet."""
    monkeypatch.setattr(tokens, "_counters", {ESTIMATE: estimate_tokens})
    monkeypatch.setattr(tokens, "_background", {})


@pytest.mark.usefixtures("unloaded")
def test_an_encoding_not_loaded_yet_loads_in_the_background_without_waiting() -> None:
    assert tokens.loaded_counter(CL100K_BASE) is None
    tokens._background[CL100K_BASE].join(timeout=30)
    counter = tokens.loaded_counter(CL100K_BASE)
    assert counter is not None
    assert counter("hello world") == 2


@pytest.mark.usefixtures("unloaded")
def test_a_background_load_that_fails_logs_once_and_leaves_the_estimate(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tokens, "_CL100K_SHA256", "0" * 64)
    assert tokens.loaded_counter(CL100K_BASE) is None
    tokens._background[CL100K_BASE].join(timeout=30)
    assert tokens.loaded_counter(CL100K_BASE) is None  # and no second load is started
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "damaged" in errors[0].getMessage()


def test_counting_needs_no_network_and_writes_no_cache(tmp_path: object) -> None:
    # tiktoken.get_encoding("cl100k_base") would download the file (or read its cache); a
    # proxy that refuses everything and an unwritable cache dir prove neither happens.
    code = (
        "import os, socket\n"
        "def refuse(*a, **k): raise OSError('no network')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from worker.tokens import token_counter\n"
        "assert token_counter('cl100k_base')('hello world') == 2\n"
        "assert not os.path.exists(os.environ['TIKTOKEN_CACHE_DIR'])\n"
    )
    cache = f"{tmp_path}/tiktoken-cache"
    env = {"PATH": "/usr/bin:/bin", "TIKTOKEN_CACHE_DIR": cache, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_encoding_file_is_package_data() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["worker.tokens"]
    shipped = sorted(p.name for p in (REPO_ROOT / "worker" / "tokens").glob("*.tiktoken"))
    assert shipped == ["cl100k_base.tiktoken"]
    assert patterns == ["*.tiktoken"]


@pytest.mark.parametrize(
    "model", ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]
)
def test_openais_embedding_models_count_cl100k_base_by_default(model: str) -> None:
    assert Settings().encoding_for(model) == CL100K_BASE


def test_an_unknown_model_falls_back_to_the_estimate() -> None:
    settings = Settings(model="BAAI/bge-m3")
    assert settings.encoding_for("BAAI/bge-m3") == ESTIMATE
    assert settings.encoding_for("nomic-embed-text") == ESTIMATE


def test_the_tokenizer_variable_sets_encodings_per_model_and_for_the_rest() -> None:
    settings = Settings.from_env(
        {"EMBEDDINGS_TOKENIZER": " my-azure-deployment = cl100k_base , estimate "}
    )
    assert settings.encoding_for("my-azure-deployment") == CL100K_BASE
    # A bare encoding covers every model not named, OpenAI's own included.
    assert settings.encoding_for("text-embedding-3-small") == ESTIMATE
    assert settings.encoding_for("bge-m3") == ESTIMATE
    alone = Settings.from_env({"EMBEDDINGS_TOKENIZER": "bge-m3=estimate"})
    assert alone.encoding_for("text-embedding-3-large") == CL100K_BASE


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("o200k_base", "unknown encoding 'o200k_base'"),
        ("text-embedding-3-small=gpt2", "unknown encoding 'gpt2'"),
        ("=cl100k_base", "expected MODEL=ENCODING"),
        ("cl100k_base,estimate", "a second bare ENCODING"),
    ],
)
def test_a_bad_tokenizer_value_fails_at_start_naming_the_variable(value: str, says: str) -> None:
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_TOKENIZER") as info:
        Settings.from_env({"EMBEDDINGS_TOKENIZER": value})
    assert says in str(info.value)
