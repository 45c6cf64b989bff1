"""Gateway settings: typed defaults, bad values named at start, keys kept out of sight."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from devstack import REPO_ROOT
from gateway.__main__ import drop_upstream_keys
from gateway.settings import DEFAULT_MAX_BODY_BYTES, GatewaySettings
from worker.errors import EmbeddingConfigError


def test_the_gateway_refuses_to_start_without_keys() -> None:
    with pytest.raises(EmbeddingConfigError, match="GATEWAY_API_KEYS is empty"):
        GatewaySettings.from_env({})


def test_allow_no_auth_lets_it_start_without_keys() -> None:
    settings = GatewaySettings.from_env({"GATEWAY_ALLOW_NO_AUTH": "1"})
    assert settings.api_keys == ()
    assert settings.allow_no_auth


def test_defaults_are_loopback_port_8080_and_8_mib_bodies() -> None:
    settings = GatewaySettings.from_env({"GATEWAY_API_KEYS": "k"})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 8 * 1024 * 1024
    assert settings.request_timeout_s == 60.0
    assert settings.max_queue_depth == 0
    assert (settings.workers, settings.log_level) == (1, "info")


def test_workers_and_log_level_are_read_and_the_level_is_case_insensitive() -> None:
    settings = GatewaySettings.from_env(
        {"GATEWAY_API_KEYS": "k", "GATEWAY_WORKERS": "4", "GATEWAY_LOG_LEVEL": "WARNING"}
    )
    assert (settings.workers, settings.log_level) == (4, "warning")


def test_keys_are_comma_separated_stripped_and_hidden_from_repr() -> None:
    settings = GatewaySettings.from_env({"GATEWAY_API_KEYS": " sk-one , ,sk-two "})
    assert settings.api_keys == ("sk-one", "sk-two")
    assert "sk-one" not in repr(settings)
    assert "sk-two" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PORT", "eighty"),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_WORKERS", "0"),
        ("GATEWAY_WORKERS", "many"),
        ("GATEWAY_LOG_LEVEL", "loud"),
        ("GATEWAY_MAX_BODY_BYTES", "0"),
        ("GATEWAY_REQUEST_TIMEOUT_S", "-1"),
        ("GATEWAY_MAX_QUEUE_DEPTH", "-5"),
        ("GATEWAY_ALLOW_NO_AUTH", "maybe"),
        ("GATEWAY_ACCESS_LOG", "loud"),
        ("EMBEDDINGS_DIMENSIONS", "many"),
        ("EMBEDDINGS_DIMENSIONS", "-1"),
        ("EMBEDDINGS_MAX_TEXT_CHARS", "0"),
        ("EMBEDDINGS_MODEL_LIMITS", "no-equals-sign"),
        ("GATEWAY_LIMIT_CONCURRENCY", "-1"),
        ("GATEWAY_LIMIT_CONCURRENCY", "lots"),
        ("GATEWAY_TIMEOUT_KEEP_ALIVE_S", "0"),
        ("GATEWAY_TIMEOUT_HEADERS_S", "0"),
        ("GATEWAY_TIMEOUT_HEADERS_S", "soon"),
        ("GATEWAY_TIMEOUT_BODY_S", "-2"),
        ("GATEWAY_MAX_HEADER_BYTES", "0"),
        ("GATEWAY_RETRY_WINDOW_S", "-1"),
        ("GATEWAY_IDEMPOTENCY_TTL_S", "-1"),
        ("GATEWAY_IDEMPOTENCY_TTL_S", "a day"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(EmbeddingConfigError, match=name):
        GatewaySettings.from_env({"GATEWAY_API_KEYS": "k", name: value})


def test_the_workers_model_dimensions_and_text_limit_are_read() -> None:
    settings = GatewaySettings.from_env(
        {
            "GATEWAY_API_KEYS": "k",
            "EMBEDDINGS_MODEL": "nomic-embed-text",
            "EMBEDDINGS_DIMENSIONS": "256",
            "EMBEDDINGS_MAX_TEXT_CHARS": "1000",
        }
    )
    assert (settings.model, settings.dimensions, settings.max_text_chars) == (
        "nomic-embed-text",
        256,
        1000,
    )


def test_no_setting_holds_the_upstream_api_key() -> None:
    secret = "sk-upstream-never-here"
    settings = GatewaySettings.from_env(
        {"GATEWAY_API_KEYS": "k", "EMBEDDINGS_API_KEY": secret, "OPENAI_API_KEY": secret}
    )
    assert secret not in {str(v) for v in dataclasses.astuple(settings)}


def test_the_entry_point_drops_the_upstream_keys_from_its_environment() -> None:
    environ = {"EMBEDDINGS_API_KEY": "sk-a", "OPENAI_API_KEY": "sk-b", "REDIS_URL": "redis://x"}
    drop_upstream_keys(environ)
    assert environ == {"REDIS_URL": "redis://x"}


def test_python_m_gateway_without_keys_exits_2_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "GATEWAY_API_KEYS" in done.stderr


def test_slow_and_idle_clients_have_documented_limits_by_default() -> None:
    settings = GatewaySettings.from_env({"GATEWAY_API_KEYS": "k"})
    assert settings.limit_concurrency == 1000
    assert settings.timeout_keep_alive_s == 5.0
    assert (settings.timeout_headers_s, settings.timeout_body_s) == (10.0, 60.0)
    assert settings.max_header_bytes == 64 * 1024


def test_the_slow_client_limits_are_read_from_the_environment() -> None:
    settings = GatewaySettings.from_env(
        {
            "GATEWAY_API_KEYS": "k",
            "GATEWAY_LIMIT_CONCURRENCY": "0",
            "GATEWAY_TIMEOUT_KEEP_ALIVE_S": "1.5",
            "GATEWAY_TIMEOUT_HEADERS_S": "2",
            "GATEWAY_TIMEOUT_BODY_S": "30",
            "GATEWAY_MAX_HEADER_BYTES": "16384",
        }
    )
    assert settings.limit_concurrency == 0
    assert settings.timeout_keep_alive_s == 1.5
    assert (settings.timeout_headers_s, settings.timeout_body_s) == (2.0, 30.0)
    assert settings.max_header_bytes == 16384


def test_the_served_models_default_to_the_workers_model() -> None:
    settings = GatewaySettings.from_env({"GATEWAY_API_KEYS": "k", "EMBEDDINGS_MODEL": "m-1"})
    assert settings.models == ("m-1",)
    listed = GatewaySettings.from_env(
        {"GATEWAY_API_KEYS": "k", "EMBEDDINGS_MODEL": "m-1", "GATEWAY_MODELS": " a, b ,,"}
    )
    assert listed.models == ("a", "b")


def test_retry_windows_default_to_ten_minutes_and_a_day() -> None:
    settings = GatewaySettings.from_env({"GATEWAY_API_KEYS": "k"})
    assert (settings.retry_window_s, settings.idempotency_ttl_s) == (600, 86_400)
    off = GatewaySettings.from_env({"GATEWAY_API_KEYS": "k", "GATEWAY_RETRY_WINDOW_S": "0"})
    assert off.retry_window_s == 0
