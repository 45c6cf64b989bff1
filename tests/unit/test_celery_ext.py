"""The Celery adaptations as a layer: checked internals, one install call, pinned sources."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.app import trace
from celery.signals import after_setup_logger
from celery.utils.imports import symbol_by_name
from kombu import serialization as kombu_serialization
from kombu.transport import redis as kombu_redis

import worker
import worker.runtime
from devstack import REPO_ROOT
from worker.celery_ext import compat, install, lua, tasklog
from worker.celery_ext.compat import Internal, missing_internals
from worker.celery_ext.config import (
    RESULT_BACKEND_CLASS,
    TASK_REQUEST_CLASS,
    WORKER_CONSUMER_CLASS,
)
from worker.celery_ext.consumer import EventBatchingConsumer
from worker.celery_ext.outages import RequeueOnOutageRequest
from worker.celery_ext.result_backend import STORE_SCRIPT, ResultBackend
from worker.celery_ext.serialization import CONTENT_TYPE, SERIALIZER_NAME
from worker.celery_ext.transport import (
    FETCH_SCRIPT,
    AtomicFetchChannel,
    AtomicFetchQoS,
    AtomicFetchTransport,
)
from worker.names import EMBED_TEXT_TASK
from worker.runtime import VectorStore

EXT_DIR = REPO_ROOT / "worker" / "celery_ext"


def test_every_internal_the_adaptations_use_is_present_in_the_installed_versions() -> None:
    assert missing_internals() == []


def test_the_check_covers_the_private_names_the_adaptations_override_or_call() -> None:
    checked = {internal.name for internal in compat.USED_INTERNALS}
    assert {
        "_brpop_start",
        "_brpop_read",
        "_flush_brpop_reauth",
        "_create_client",
        "_store_result",
        "_ensure_retryable",
        "failure_expires",
        "on_send_event_buffered",
        "_flush_events",
        "saferepr",
        "TRANSPORT_ALIASES",
        "_transport_cache",
    } <= checked


def test_a_missing_internal_fails_naming_it_and_the_installed_and_supported_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(kombu_redis.Channel, "_brpop_read")
    with pytest.raises(ImportError) as info:
        compat.check()
    message = str(info.value)
    assert "kombu.transport.redis:Channel._brpop_read" in message
    assert "worker.celery_ext.transport" in message
    assert f"kombu {metadata.version('kombu')}" in message
    assert f"celery {metadata.version('celery')}" in message
    assert "celery 5.7.*" in message and "kombu 5.7.*" in message


def test_an_attribute_only_a_constructor_sets_counts_as_present() -> None:
    set_in_init = Internal("celery.backends.redis", "RedisBackend", "failure_expires", "t")
    assert not hasattr(symbol_by_name("celery.backends.redis:RedisBackend"), "failure_expires")
    assert missing_internals((set_in_init,)) == []


def test_a_name_module_or_owner_that_does_not_exist_counts_as_missing() -> None:
    absent = (
        Internal("celery.backends.redis", "RedisBackend", "_no_such_method", "t"),
        Internal("celery.no_such_module", "", "anything", "t"),
        Internal("celery.backends.redis", "NoSuchBackend", "get", "t"),
    )
    assert missing_internals(absent) == list(absent)


def test_the_pins_allow_only_the_minor_the_layer_was_written_against() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    assert "celery[redis]~=5.7.0" in dependencies
    assert "kombu~=5.7.0" in dependencies
    assert compat.SUPPORTED_VERSIONS == {"celery": "5.7.*", "kombu": "5.7.*"}
    assert metadata.version("celery").startswith("5.7.")
    assert metadata.version("kombu").startswith("5.7.")


# Each override copied from upstream and changed, with where its docstring says it came from.
COPIED_OVERRIDES = [
    (AtomicFetchChannel, "_brpop_start"),
    (AtomicFetchChannel, "_brpop_read"),
    (AtomicFetchChannel, "_create_client"),
    (AtomicFetchQoS, "append"),
    (AtomicFetchQoS, "ack"),
    (ResultBackend, "_store_result"),
    (EventBatchingConsumer, "on_send_event_buffered"),
]
_ADAPTED = re.compile(
    r"Adapted from (?P<dist>celery|kombu) (?P<version>\d+\.\d+\.\d+)\s+"
    r"(?P<path>[\w/]+\.py)\s+(?P<qualname>[\w.]*\w)"
)


@pytest.mark.parametrize(
    ("cls", "method"), COPIED_OVERRIDES, ids=lambda x: getattr(x, "__name__", str(x))
)
def test_every_copied_override_names_the_upstream_release_file_and_method(
    cls: type, method: str
) -> None:
    docstring = vars(cls)[method].__doc__ or ""
    found = _ADAPTED.search(docstring)
    assert found, f"{cls.__name__}.{method} does not say what it was adapted from"
    assert found["version"].startswith("5.7.")
    module_name = found["path"].removesuffix(".py").replace("/", ".")
    upstream: Any = importlib.import_module(module_name)
    for part in found["qualname"].split("."):
        upstream = getattr(upstream, part)
    assert callable(upstream)
    assert found["qualname"].endswith(method)


def test_the_classes_celery_loads_by_name_are_the_adaptations() -> None:
    assert symbol_by_name(RESULT_BACKEND_CLASS) is ResultBackend
    assert symbol_by_name(WORKER_CONSUMER_CLASS) is EventBatchingConsumer
    assert symbol_by_name(TASK_REQUEST_CLASS) is RequeueOnOutageRequest


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://:pw@redis.example:6380/0"])
def test_a_redis_broker_url_keeps_its_scheme_and_still_uses_the_atomic_fetch_transport(
    url: str,
) -> None:
    app = Celery("scheme-test", set_as_current=False)
    install(app)
    app.conf.update(broker_url=url, broker_transport=None)
    with app.connection_for_write() as connection:
        # What Flower, `celery inspect` and the worker's banner read (nothing connects).
        assert connection.as_uri().startswith(url.split("://")[0] + "://")
        assert connection.transport_cls == url.split("://")[0]
        assert type(connection.transport) is AtomicFetchTransport
        assert connection.transport.Channel is AtomicFetchChannel
    app.close()


def test_the_embedding_task_gets_the_requeue_on_outage_request_from_the_configuration() -> None:
    import worker.tasks  # registers the task

    assert symbol_by_name(worker.app.tasks[EMBED_TEXT_TASK].Request) is RequeueOnOutageRequest


def test_install_registers_the_serializer_and_shortens_vector_results_once() -> None:
    app = Celery("install-test", set_as_current=False)
    install(app)
    patched = trace.saferepr
    install(app)
    assert trace.saferepr is patched
    assert getattr(trace.saferepr, "summarises_vectors", False)
    content_type, _, payload = kombu_serialization.dumps({"v": [0.5] * 8}, SERIALIZER_NAME)
    assert content_type == CONTENT_TYPE
    assert kombu_serialization.loads(payload, content_type, "utf-8") == {"v": [0.5] * 8}
    receivers = [r for r in after_setup_logger._live_receivers(None) if r is _quieting()]
    assert len(receivers) == 1


def _quieting() -> Any:
    return tasklog.quiet_per_task_info


def test_importing_the_adaptations_patches_nothing_until_install() -> None:
    code = (
        "import celery.app.trace as trace, kombu.serialization as ks\n"
        "import kombu.transport as kt\n"
        "import worker.celery_ext.config, worker.celery_ext.serialization as s\n"
        "assert not getattr(trace.saferepr, 'summarises_vectors', False), 'saferepr'\n"
        "assert s.SERIALIZER_NAME not in ks.registry._encoders, 'serializer'\n"
        "assert kt.get_transport_cls('redis').__module__ == 'kombu.transport.redis', 'early'\n"
        "from worker.celery_ext import install\n"
        "from celery import Celery\n"
        "install(Celery(set_as_current=False))\n"
        "assert getattr(trace.saferepr, 'summarises_vectors', False), 'install'\n"
        # A name kombu resolved (and cached) before install() resolves anew.
        "assert kt.get_transport_cls('redis').__name__ == 'AtomicFetchTransport', 'cache'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_worker_reaches_the_batched_write_through_a_protocol_not_the_class() -> None:
    backend = ResultBackend(app=Celery(set_as_current=False), url="redis://127.0.0.1:1/0")
    assert isinstance(backend, VectorStore)
    assert ResultBackend not in vars(worker.runtime).values()


@pytest.mark.parametrize(
    ("script", "filename"), [(FETCH_SCRIPT, "fetch.lua"), (STORE_SCRIPT, "store_result.lua")]
)
def test_a_lua_script_is_its_file_without_the_comment_lines(script: str, filename: str) -> None:
    source = (EXT_DIR / filename).read_text()
    assert source.lstrip().startswith("--")  # documented where it is read
    assert not any(line.lstrip().startswith("--") for line in script.splitlines())
    code = [line for line in source.splitlines() if line.strip() and line.strip()[:2] != "--"]
    assert script.splitlines() == code
    assert lua.load_script(filename) == script


def test_the_lua_scripts_are_package_data() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["worker.celery_ext"]
    scripts = sorted(path.name for path in EXT_DIR.glob("*.lua"))
    assert scripts == ["fetch.lua", "store_result.lua"]
    assert all(any(Path(name).match(pattern) for pattern in patterns) for name in scripts)


def test_an_attribute_a_helper_method_sets_counts_as_present() -> None:
    # ResultConsumer._reset_sync, not __init__, sets _pending_unsubscribe.
    set_in_helper = Internal("celery.backends.redis", "ResultConsumer", "_pending_unsubscribe", "t")
    assert missing_internals((set_in_helper,)) == []


def test_the_internals_are_checked_once_however_many_modules_ask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(compat, "missing_internals", lambda: calls.append(1) or [])
    compat.check_once.cache_clear()
    for _ in range(4):
        compat.check_once()
    assert calls == [1]
