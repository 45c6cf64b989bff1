"""``Settings.from_env`` and ``EmbeddingConfig``: typed defaults, one reader, named bad values."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from devstack import REPO_ROOT
from worker import settings as s
from worker.embeddings import EmbeddingConfig
from worker.embeddings.config import settings_field
from worker.errors import EmbeddingConfigError
from worker.settings import Settings

SECRET = "sk-secret-test-key"


def test_from_env_with_nothing_set_gives_the_seed_defaults() -> None:
    settings = Settings.from_env(environ={})
    assert settings == Settings()
    assert settings.batch_size == 8
    assert settings.max_retries == 3
    assert settings.initial_backoff_s == 1.0
    assert settings.max_backoff_s == 32.0
    assert settings.jitter_factor == 0.2
    assert settings.timeout_s == 30.0
    assert settings.pool_size == 3
    assert settings.encoding_format == "base64"
    assert settings.model == "text-embedding-3-small"


def test_from_env_reads_typed_values() -> None:
    settings = Settings.from_env(
        environ={
            "EMBEDDINGS_BASE_URL": "http://localhost:9999/v1",
            "EMBEDDINGS_BATCH_SIZE": " 16 ",
            "EMBEDDINGS_INITIAL_BACKOFF_S": "0.5",
            "EMBEDDINGS_MODEL": "text-embedding-3-large",
            "EMBEDDINGS_ENCODING_FORMAT": "float",
            "BROKER_VISIBILITY_TIMEOUT": "1200",
        }
    )
    assert settings.base_url == "http://localhost:9999/v1"
    assert settings.batch_size == 16
    assert settings.initial_backoff_s == 0.5
    assert settings.model == "text-embedding-3-large"
    assert settings.encoding_format == "float"
    assert settings.visibility_timeout_s == 1200


def test_from_env_treats_a_blank_value_as_unset() -> None:
    assert Settings.from_env(environ={"EMBEDDINGS_BATCH_SIZE": "  "}).batch_size == 8


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDINGS_POOL_SIZE", "5")
    assert Settings.from_env().pool_size == 5


def test_api_key_falls_back_to_openai_api_key() -> None:
    assert Settings.from_env(environ={"OPENAI_API_KEY": SECRET}).api_key == SECRET


def test_embeddings_api_key_wins_over_openai_api_key() -> None:
    environ = {"OPENAI_API_KEY": "sk-other", "EMBEDDINGS_API_KEY": SECRET}
    assert Settings.from_env(environ=environ).api_key == SECRET


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EMBEDDINGS_BATCH_SIZE", "eight"),
        ("EMBEDDINGS_BATCH_SIZE", "1.5"),
        ("EMBEDDINGS_TIMEOUT_S", "soon"),
        ("EMBEDDINGS_POOL_SIZE", "0"),
        ("EMBEDDINGS_TIMEOUT_S", "-1"),
        ("EMBEDDINGS_POOL_TIMEOUT_S", "0"),
        ("EMBEDDINGS_MAX_TEXT_CHARS", "0"),
        ("EMBEDDINGS_DIMENSIONS", "-1"),
        ("EMBEDDINGS_BATCH_SIZE", "4096"),
        ("EMBEDDINGS_JITTER_FACTOR", "1.0"),
        ("EMBEDDINGS_ENCODING_FORMAT", "hex"),
        ("EMBEDDINGS_BASE_URL", "ftp://example.com"),
        ("BROKER_VISIBILITY_TIMEOUT", "ten"),
        ("BROKER_UNACKED_RESTORE_INTERVAL", "0"),
        ("CELERY_WORKER_CONCURRENCY", "-1"),
        ("CELERY_WORKER_PREFETCH_MULTIPLIER", "many"),
        ("REDIS_URL", "localhost:6379"),
        ("EMBEDDINGS_BROKER_URL", "nowhere"),
        ("EMBEDDINGS_RESULT_BACKEND_URL", "nowhere"),
    ],
)
def test_a_bad_value_raises_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(EmbeddingConfigError, match=variable) as info:
        Settings.from_env(environ={variable: value})
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("variable", ["EMBEDDINGS_MAX_RETRIES", "EMBEDDINGS_TASK_MAX_RETRIES"])
def test_a_negative_retry_count_raises_naming_the_variable(variable: str) -> None:
    with pytest.raises(EmbeddingConfigError, match=variable):
        Settings.from_env(environ={variable: "-1"})


def test_a_non_positive_visibility_timeout_names_broker_visibility_timeout() -> None:
    with pytest.raises(EmbeddingConfigError, match="BROKER_VISIBILITY_TIMEOUT"):
        Settings.from_env(environ={"BROKER_VISIBILITY_TIMEOUT": "0"})


def test_from_env_reads_the_redis_broker_and_celery_worker_variables() -> None:
    settings = Settings.from_env(
        environ={
            "REDIS_URL": "redis://cache:6379/1",
            "EMBEDDINGS_BROKER_URL": "redis://broker:6379/2",
            "EMBEDDINGS_RESULT_BACKEND_URL": "redis://results:6379/3",
            "BROKER_UNACKED_RESTORE_INTERVAL": "7",
            "CELERY_WORKER_POOL": "gevent",
            "CELERY_WORKER_CONCURRENCY": "64",
            "CELERY_WORKER_PREFETCH_MULTIPLIER": "2",
        }
    )
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.broker_url == "redis://broker:6379/2"
    assert settings.result_backend_url == "redis://results:6379/3"
    assert settings.unacked_restore_interval_s == 7
    assert settings.worker_pool == "gevent"
    assert (settings.worker_concurrency, settings.worker_prefetch_multiplier) == (64, 2)


def test_without_celery_variables_broker_and_results_follow_redis_url() -> None:
    settings = Settings.from_env(environ={})
    assert settings.redis_url == "redis://localhost:6379/0"
    assert (settings.broker_url, settings.result_backend_url) == ("", "")
    assert (settings.worker_pool, settings.worker_concurrency) == ("threads", 0)


def test_settings_repr_hides_redis_urls_which_may_carry_a_password() -> None:
    settings = Settings(
        redis_url="redis://:hunter2@a:6379/0",
        broker_url="redis://:hunter2@b:6379/0",
        result_backend_url="redis://:hunter2@c:6379/0",
    )
    assert "hunter2" not in repr(settings)


def test_a_bad_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(EmbeddingConfigError, match="REDIS_URL") as info:
        Settings.from_env(environ={"REDIS_URL": "hunter2@cache"})
    assert "hunter2" not in str(info.value)


def test_every_variable_settings_read_is_in_the_readme_configuration_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    variables = [s.env_variable(spec.name) for spec in dataclasses.fields(Settings)]
    missing = [name for name in [*variables, "OPENAI_API_KEY"] if f"`{name}`" not in table]
    assert missing == []


def test_env_variable_names_the_prefixed_and_the_celery_variables() -> None:
    assert s.env_variable("batch_size") == "EMBEDDINGS_BATCH_SIZE"
    assert s.env_variable("visibility_timeout_s") == "BROKER_VISIBILITY_TIMEOUT"
    assert s.env_variable("broker_url") == "EMBEDDINGS_BROKER_URL"


def test_settings_repr_hides_the_api_key() -> None:
    settings = Settings.from_env(environ={"EMBEDDINGS_API_KEY": SECRET})
    assert settings.api_key == SECRET
    assert SECRET not in repr(settings)


def test_every_setting_default_is_a_named_constant_or_documented_zero() -> None:
    constants = {v for k, v in vars(s).items() if k.startswith("DEFAULT_")}
    for spec in dataclasses.fields(Settings):
        if spec.name in (
            "api_key",
            "dimensions",
            "metrics_port",
            "broker_url",
            "result_backend_url",
            "worker_concurrency",
        ):
            continue
        assert spec.default in constants, spec.name


def test_embedding_config_has_the_seeds_defaults() -> None:
    config = EmbeddingConfig()
    assert (config.batch_size, config.max_retries, config.pool_size) == (8, 3, 3)
    assert (config.initial_backoff, config.max_backoff, config.jitter_factor) == (1.0, 32.0, 0.2)
    assert config.timeout == 30.0
    assert config.model == "text-embedding-3-small"
    assert config.base_url == "https://api.openai.com/v1"
    assert config.api_key == ""


def test_embedding_config_defaults_are_the_settings_defaults_under_the_seeds_names() -> None:
    config = EmbeddingConfig()
    defaults = Settings()
    mapped = {f.name: settings_field(f.name) for f in dataclasses.fields(EmbeddingConfig)}
    for own, settings_name in mapped.items():
        assert getattr(config, own) == getattr(defaults, settings_name), own
    # Only the seed's unit-less names differ, each by the unit.
    assert {own: name for own, name in mapped.items() if own != name} == {
        "initial_backoff": "initial_backoff_s",
        "max_backoff": "max_backoff_s",
        "timeout": "timeout_s",
        "pool_timeout": "pool_timeout_s",
    }
    with pytest.raises(AttributeError, match="no_such"):
        settings_field("no_such")


def test_the_seeds_call_still_builds_a_config() -> None:
    config = EmbeddingConfig(batch_size=8, max_retries=3, initial_backoff=1.0, jitter_factor=0.2)
    assert (config.batch_size, config.max_retries, config.initial_backoff) == (8, 3, 1.0)
    assert config.jitter_factor == 0.2


def test_embedding_config_reads_the_environment_only_through_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read: list[str] = []
    real = s.read_env_setting

    def recording(field_name: str, environ: Any = None) -> object:
        read.append(field_name)
        return real(field_name, environ)

    monkeypatch.setattr(s, "read_env_setting", recording)
    monkeypatch.setenv("EMBEDDINGS_MODEL", "through-settings")
    assert EmbeddingConfig().model == "through-settings"
    assert sorted(read) == ["api_key", "base_url", "model"]
    read.clear()
    EmbeddingConfig(model="m", base_url="http://x/v1", api_key="k")
    assert read == []


def test_embedding_config_defaults_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBEDDINGS_BASE_URL", "http://stub:8000/v1")
    monkeypatch.setenv("EMBEDDINGS_MODEL", "text-embedding-3-large")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    config = EmbeddingConfig()
    assert config.base_url == "http://stub:8000/v1"
    assert config.model == "text-embedding-3-large"
    assert config.api_key == SECRET


def test_embedding_config_prefers_embeddings_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    monkeypatch.setenv("EMBEDDINGS_API_KEY", SECRET)
    assert EmbeddingConfig().api_key == SECRET


def test_embedding_config_explicit_values_beat_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMBEDDINGS_MODEL", "from-env")
    assert EmbeddingConfig(model="explicit").model == "explicit"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"batch_size": 0}, "BATCH_SIZE"),
        ({"pool_size": -1}, "POOL_SIZE"),
        ({"jitter_factor": 1.5}, "JITTER_FACTOR"),
        ({"encoding_format": "hex"}, "ENCODING_FORMAT"),
        ({"base_url": "api.openai.com"}, "BASE_URL"),
        ({"initial_backoff": -1.0}, "must not be negative"),
        ({"max_backoff": -1.0}, "must not be negative"),
    ],
)
def test_embedding_config_refuses_bad_values(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(EmbeddingConfigError, match="invalid EmbeddingConfig") as info:
        EmbeddingConfig(**overrides)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_embedding_config_repr_hides_the_api_key() -> None:
    config = EmbeddingConfig(api_key=SECRET)
    assert config.api_key == SECRET
    assert SECRET not in repr(config)
    assert "api_key" not in repr(config)


def test_embedding_config_round_trips_through_settings() -> None:
    config = EmbeddingConfig(
        model="m",
        batch_size=4,
        max_retries=1,
        api_key=SECRET,
        base_url="http://x/v1",
        dimensions=256,
    )
    assert EmbeddingConfig.from_settings(config.to_settings()) == config


def test_embedding_config_from_env_settings_carries_every_client_field() -> None:
    settings = Settings.from_env(
        environ={"EMBEDDINGS_POOL_TIMEOUT_S": "2.5", "EMBEDDINGS_MAX_TEXT_CHARS": "100"}
    )
    config = EmbeddingConfig.from_settings(settings)
    assert config.pool_timeout == 2.5
    assert config.max_text_chars == 100
