"""One Celery configuration, built from ``Settings``: celeryconfig and ``--redis-url`` alike."""

from __future__ import annotations

import importlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

import celeryconfig
from producers import cli
from tests.unit.stream_fakes import FakeStream
from worker.celery_ext.config import (
    RESULT_BACKEND_CLASS,
    WORKER_CONSUMER_CLASS,
    apply_config,
    celery_config,
    with_redis_url,
)
from worker.celery_ext.result_backend import ResultBackend
from worker.celery_ext.serialization import SERIALIZER_NAME
from worker.celery_ext.transport import AtomicFetchTransport
from worker.settings import Settings

VERIFIED = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
TLS_URL = "rediss://:s3cret@redis.example.com:6380/2"


def test_by_default_broker_and_results_are_redis_url_with_the_projects_classes() -> None:
    config = celery_config(Settings(redis_url="redis://cache:6379/3"))
    assert config["broker_url"] == "redis://cache:6379/3"
    assert config["result_backend"] == f"{RESULT_BACKEND_CLASS}+redis://cache:6379/3"
    # The URL keeps its scheme; install() makes "redis" the atomic-fetch transport.
    assert config["broker_transport"] is None
    assert config["worker_consumer"] == WORKER_CONSUMER_CLASS
    assert config["broker_use_ssl"] is None
    assert config["redis_backend_use_ssl"] is None


def test_a_rediss_url_gets_verified_tls_on_both_sides() -> None:
    config = celery_config(Settings(redis_url=TLS_URL))
    assert config["broker_use_ssl"] == VERIFIED
    assert config["redis_backend_use_ssl"] == VERIFIED
    assert config["broker_transport"] is None
    assert config["result_backend"] == f"{RESULT_BACKEND_CLASS}+{TLS_URL}"


def test_the_celery_variables_override_either_side_and_non_redis_keeps_celerys_own() -> None:
    settings = Settings.from_env(
        environ={
            "REDIS_URL": "redis://ignored:6379/0",
            "EMBEDDINGS_BROKER_URL": "memory://",
            "EMBEDDINGS_RESULT_BACKEND_URL": "rediss://results:6380/1",
        }
    )
    config = celery_config(settings)
    assert config["broker_url"] == "memory://"
    assert config["broker_transport"] is None
    assert config["broker_use_ssl"] is None
    assert config["result_backend"] == f"{RESULT_BACKEND_CLASS}+rediss://results:6380/1"
    assert config["redis_backend_use_ssl"] == VERIFIED


def test_worker_and_broker_settings_come_from_their_variables() -> None:
    settings = Settings.from_env(
        environ={
            "CELERY_WORKER_POOL": "gevent",
            "CELERY_WORKER_CONCURRENCY": "100",
            "CELERY_WORKER_PREFETCH_MULTIPLIER": "4",
            "BROKER_VISIBILITY_TIMEOUT": "600",
            "BROKER_UNACKED_RESTORE_INTERVAL": "2",
        }
    )
    config = celery_config(settings)
    assert (config["worker_pool"], config["worker_concurrency"]) == ("gevent", 100)
    assert config["worker_prefetch_multiplier"] == 4
    for options in (config["broker_transport_options"], config["result_backend_transport_options"]):
        assert options["visibility_timeout"] == 600
        assert options["unacked_restore_interval"] == 2


def test_the_default_concurrency_holds_every_call_in_flight_plus_two_batches_forming() -> None:
    assert celery_config(Settings())["worker_concurrency"] == 3 * 8 + 2 * 8
    assert celery_config(Settings(pool_size=2, batch_size=16))["worker_concurrency"] == 64


def test_messages_are_json_only_and_results_use_the_vector_serializer() -> None:
    config = celery_config(Settings())
    assert config["accept_content"] == ["json"]
    assert config["task_serializer"] == "json"
    assert config["result_serializer"] == SERIALIZER_NAME
    assert "pickle" not in config["result_accept_content"]


def test_celeryconfig_is_the_builders_config_for_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/4")
    monkeypatch.setenv("CELERY_WORKER_CONCURRENCY", "12")
    module = importlib.reload(celeryconfig)
    try:
        public = {k: v for k, v in vars(module).items() if not k.startswith("_")}
        assert public == celery_config(Settings.from_env())
        assert public["broker_url"] == "redis://from-env:6379/4"
        assert public["worker_concurrency"] == 12
    finally:
        monkeypatch.undo()
        importlib.reload(celeryconfig)


def test_applying_the_config_for_a_plain_url_clears_what_a_tls_url_set() -> None:
    app = Celery("reapply-test", set_as_current=False)
    apply_config(app, Settings(redis_url=TLS_URL))
    apply_config(app, with_redis_url(Settings(redis_url=TLS_URL), "redis://plain:6379/0"))
    assert app.conf.broker_use_ssl is None
    assert app.conf.redis_backend_use_ssl is None
    assert app.conf.broker_url == "redis://plain:6379/0"


def test_with_redis_url_replaces_both_sides_and_the_celery_overrides() -> None:
    settings = Settings(broker_url="redis://b:1/0", result_backend_url="redis://r:1/0")
    pointed = with_redis_url(settings, "redis://new:6379/5")
    config = celery_config(pointed)
    assert config["broker_url"] == "redis://new:6379/5"
    assert config["result_backend"] == f"{RESULT_BACKEND_CLASS}+redis://new:6379/5"


@pytest.fixture
def fresh_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """An app configured like the worker's, standing in for it in ``embed-file``."""
    app = Celery("cli-test", set_as_current=False)
    apply_config(app, Settings.from_env(environ={}))
    monkeypatch.setattr(cli, "_project_app", lambda: app)
    yield app
    app.close()


def test_embed_file_redis_url_rediss_gets_verified_tls_and_the_projects_backend_and_transport(
    fresh_app: Celery, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    used: list[Celery] = []

    def stream_for(app: Celery, model: str | None = None, **_options: Any) -> Any:
        used.append(app)
        return FakeStream()

    monkeypatch.setattr(cli, "QueueStream", stream_for)
    source = tmp_path / "texts.txt"
    source.write_text("one\ntwo\n")
    assert cli.main([str(source), "--redis-url", TLS_URL, "--no-progress"]) == 0
    assert used == [fresh_app]

    conf = fresh_app.conf
    assert conf.broker_url == TLS_URL
    assert conf.broker_use_ssl == VERIFIED
    assert conf.broker_transport is None
    assert conf.result_backend == f"{RESULT_BACKEND_CLASS}+{TLS_URL}"
    # What the app builds from that (nothing connects): kombu and Celery both verify.
    with fresh_app.connection_for_write() as connection:
        assert connection.ssl == VERIFIED
        assert type(connection.transport) is AtomicFetchTransport
    backend = fresh_app.backend
    assert type(backend) is ResultBackend
    assert backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert issubclass(backend.connparams["connection_class"], redis.SSLConnection)
