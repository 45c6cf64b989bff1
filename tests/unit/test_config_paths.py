"""Every way of naming Redis runs the project's result backend and transport, never stock ones.

Celery reads ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` from the process environment
itself, over its configuration, so the project reads names of its own and refuses Celery's.
Each case sets the variables in ``os.environ``, as a real deployment does.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.app import utils as celery_app_utils

import celeryconfig
from producers import cli
from tests.unit.stream_fakes import FakeStream
from worker.celery_ext import install
from worker.celery_ext.config import CELERY_URL_VARIABLES, apply_config, celery_config
from worker.celery_ext.result_backend import ResultBackend
from worker.celery_ext.sentinel import SentinelAtomicFetchTransport, SentinelResultBackend
from worker.celery_ext.transport import AtomicFetchTransport
from worker.errors import EmbeddingConfigError
from worker.redis_client import async_redis_from_url, redis_from_url
from worker.settings import Settings

TLS = "rediss://:pw@tls.example.com:6380/2"
_VARIABLES = (
    "REDIS_URL",
    *CELERY_URL_VARIABLES,
    "EMBEDDINGS_BROKER_URL",
    "EMBEDDINGS_RESULT_BACKEND_URL",
    "REDIS_SENTINEL_MASTER",
    "REDIS_SENTINEL_PASSWORD",
)

# (environment, expected broker host, expected result backend host)
PATHS: dict[str, tuple[dict[str, str], str, str]] = {
    "REDIS_URL redis": ({"REDIS_URL": "redis://one:6379/1"}, "one", "one"),
    "REDIS_URL rediss": ({"REDIS_URL": TLS}, "tls.example.com", "tls.example.com"),
    "CELERY_BROKER_URL and CELERY_RESULT_BACKEND redis": (
        {
            "REDIS_URL": "redis://ignored:6379/0",
            "EMBEDDINGS_BROKER_URL": "redis://broker:6379/2",
            "EMBEDDINGS_RESULT_BACKEND_URL": "redis://results:6379/3",
        },
        "broker",
        "results",
    ),
    "CELERY_BROKER_URL and CELERY_RESULT_BACKEND rediss": (
        {
            "EMBEDDINGS_BROKER_URL": "rediss://:pw@broker.example.com:6380/0",
            "EMBEDDINGS_RESULT_BACKEND_URL": "rediss://:pw@results.example.com:6380/1",
        },
        "broker.example.com",
        "results.example.com",
    ),
    "CELERY_RESULT_BACKEND alone": (
        {"EMBEDDINGS_RESULT_BACKEND_URL": "redis://results:6379/3"},
        "localhost",
        "results",
    ),
}


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Sets the variables in the real environment, where Celery reads them too."""

    def set_(values: dict[str, str]) -> dict[str, str]:
        for name in _VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return values

    yield set_
    # celeryconfig may have been reloaded under these variables: read it again without them.
    monkeypatch.undo()
    importlib.reload(celeryconfig)


def _check(app: Celery, broker_host: str, results_host: str) -> None:
    backend = app.backend
    assert type(backend) is ResultBackend
    assert backend.connparams["host"] == results_host
    with app.connection_for_write() as connection:
        assert type(connection.transport) is AtomicFetchTransport
        assert connection.hostname == broker_host


@pytest.mark.parametrize("path", PATHS)
def test_a_fresh_app_given_the_config_runs_the_projects_classes(environ: Any, path: str) -> None:
    values, broker_host, results_host = PATHS[path]
    environ(values)
    app = Celery("paths-test", set_as_current=False)
    try:
        apply_config(app, Settings.from_env(values))
        _check(app, broker_host, results_host)
    finally:
        app.close()


@pytest.mark.parametrize("path", PATHS)
def test_the_workers_own_app_runs_the_projects_classes(environ: Any, path: str) -> None:
    values, broker_host, results_host = PATHS[path]
    environ(values)
    importlib.reload(celeryconfig)
    app = Celery("worker-path-test", set_as_current=False)
    try:
        # What worker.celery_app does for `celery -A worker worker`.
        app.config_from_object("celeryconfig")
        install(app)
        _check(app, broker_host, results_host)
    finally:
        app.close()


def test_celery_takes_its_own_variable_over_the_configuration(environ: Any) -> None:
    # Why the project reads EMBEDDINGS_RESULT_BACKEND_URL and refuses CELERY_RESULT_BACKEND:
    # Celery's configuration object answers result_backend from the environment, dropping the
    # class prefix the config sets.
    environ({"CELERY_RESULT_BACKEND": "redis://results:6379/3"})
    app = Celery("stock-test", set_as_current=False)
    app.config_from_object({"result_backend": "x.y:Backend+redis://results:6379/3"})
    assert app.conf.result_backend == "redis://results:6379/3"
    app.close()


@pytest.mark.parametrize("variable", CELERY_URL_VARIABLES)
def test_a_celery_url_variable_is_refused_naming_it(environ: Any, variable: str) -> None:
    environ({variable: "redis://elsewhere:6379/3"})
    app = Celery("refuse-test", set_as_current=False)
    try:
        with pytest.raises(EmbeddingConfigError, match=variable):
            apply_config(app, Settings.from_env({}))
        with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_RESULT_BACKEND_URL"):
            install(app)
    finally:
        app.close()


def test_install_leaves_celerys_configuration_object_alone(environ: Any) -> None:
    # install() no longer swaps the class of app.conf (it once did, to win over the variables).
    environ({})
    app = Celery("conf-class-test", set_as_current=False)
    try:
        install(app)
        apply_config(app, Settings.from_env({}))
        assert type(app.conf) is celery_app_utils.Settings
    finally:
        app.close()


def test_embed_file_redis_url_wins_over_the_celery_variables(
    environ: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = environ(
        {
            "EMBEDDINGS_BROKER_URL": "redis://broker:6379/2",
            "EMBEDDINGS_RESULT_BACKEND_URL": "redis://r:1/3",
        }
    )
    app = Celery("cli-paths-test", set_as_current=False)
    apply_config(app, Settings.from_env(values))
    monkeypatch.setattr(cli, "_project_app", lambda: app)
    used: list[Celery] = []

    def stream_for(app: Celery, model: str | None = None, **_options: Any) -> Any:
        used.append(app)
        return FakeStream()

    monkeypatch.setattr(cli, "QueueStream", stream_for)
    source = tmp_path / "texts.txt"
    source.write_text("one\n")
    try:
        assert cli.main([str(source), "--redis-url", "redis://cli:6379/5", "--no-progress"]) == 0
        assert used == [app]
        _check(app, "cli", "cli")
    finally:
        app.close()


SENTINELS = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"


@pytest.mark.parametrize(
    "values",
    [
        {"REDIS_URL": SENTINELS},
        {"EMBEDDINGS_BROKER_URL": SENTINELS, "EMBEDDINGS_RESULT_BACKEND_URL": SENTINELS},
    ],
    ids=["REDIS_URL", "CELERY variables"],
)
def test_a_sentinel_url_runs_the_projects_sentinel_classes(environ: Any, values: dict[str, str]):
    values = environ(
        {**values, "REDIS_SENTINEL_MASTER": "queue-master", "REDIS_SENTINEL_PASSWORD": "s3nt"}
    )
    settings = Settings.from_env(values)
    app = Celery("sentinel-test", set_as_current=False)
    try:
        apply_config(app, settings)
        backend = app.backend
        assert type(backend) is SentinelResultBackend
        assert backend._transport_options["master_name"] == "queue-master"
        assert backend._transport_options["sentinel_kwargs"]["password"] == "s3nt"
        with app.connection_for_write() as connection:
            assert type(connection.transport) is SentinelAtomicFetchTransport
            assert connection.transport_options["master_name"] == "queue-master"
            assert connection.transport_options["sentinel_kwargs"]["password"] == "s3nt"
    finally:
        app.close()
    assert "s3nt" not in repr(settings)


def test_a_plain_redis_url_carries_no_sentinel_options() -> None:
    config = celery_config(Settings(redis_url="redis://one:6379/0"))
    assert "master_name" not in config["broker_transport_options"]
    assert "master_name" not in config["result_backend_transport_options"]


def test_a_sentinel_url_gives_a_client_of_the_named_master_through_every_sentinel() -> None:
    settings = Settings(redis_sentinel_master="queue-master", redis_sentinel_password="s3nt")
    url = "sentinel://:pw@10.0.0.1:26379/3;sentinel://10.0.0.2"
    client = redis_from_url(url, settings, socket_timeout=0.5)
    pool = client.connection_pool
    assert pool.service_name == "queue-master"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["socket_timeout"] == 0.5
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["host"] for s in sentinels] == [
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26379]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "s3nt"


@pytest.mark.parametrize("build", [redis_from_url, async_redis_from_url], ids=["sync", "asyncio"])
def test_the_sync_and_async_clients_read_a_sentinel_url_the_same_way(build: Any) -> None:
    settings = Settings(redis_sentinel_master="queue-master", redis_sentinel_password="s3nt")
    url = "sentinel://:p%40ss@10.0.0.1:26379/3;sentinel://10.0.0.2:26380"
    pool = build(url, settings, socket_timeout=0.5).connection_pool
    assert pool.service_name == "queue-master"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "p@ss")
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert {(s["password"], s["socket_timeout"]) for s in sentinels} == {("s3nt", 0.5)}
    with pytest.raises(EmbeddingConfigError, match="part 2 of 2"):
        build("sentinel://:pw@h1/0;sentinel://h2:port", settings)


def test_the_budget_finds_the_result_backends_redis_when_its_password_holds_a_plus():
    from worker.runtime import limiter_url

    url = limiter_url(
        Settings(), "amqp://guest@mq//", "worker.celery_ext.x:Backend+redis://:pa+ss@cache:6379/3"
    )
    assert url == "redis://:pa+ss@cache:6379/3"
    assert (
        limiter_url(Settings(), "amqp://mq//", "redis://:a+b@r:6379/1") == "redis://:a+b@r:6379/1"
    )
