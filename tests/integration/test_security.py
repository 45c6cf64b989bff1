"""Security and hostile input at the worker: pickle refused, malformed messages, no API key
anywhere, password-protected and TLS Redis URLs, results that expire.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue

import producers
from devstack import WorkerProcess, wait_for
from stubapi import StubServer
from tests.integration.faultkit import (
    DIMS,
    RedisServer,
    all_redis_bytes,
    app_for,
    expected,
    outcomes,
    wait_all_ready,
)
from tests.integration.harness import (
    REPO_ROOT,
    TEST_API_KEY,
    TEST_REDIS_URL,
    queued_texts,
    worker_env,
)
from worker.errors import EmbeddingAPIError, EmbeddingInputTypeError

pytestmark = pytest.mark.integration

TASK = "embeddings.embed_text"


class _WouldRunCode:
    """Unpickling this creates ``path``: proof that a worker decoded a pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _raw_publish(url: str, body: object, headers: dict[str, object] | None, **options) -> None:
    """Publish straight to the queue, as another program could, bypassing the producers."""
    with Connection(url) as conn:
        queue = Queue("embeddings", Exchange("embeddings"), "embeddings")
        with conn.Producer() as producer:
            producer.publish(body, exchange=queue.exchange, routing_key="embeddings",
                             headers=headers, declare=[queue], **options)  # fmt: skip


def _still_works(worker: WorkerProcess, app, text: str) -> None:
    assert worker.alive(), worker.log()[-3000:]
    assert producers.embed_text(text, timeout=30, app=app) == expected(text)


def test_a_pickled_message_is_refused_undecoded_and_the_worker_carries_on(
    start_worker, stub, app, clean_redis: redis.Redis, tmp_path: Path
):
    worker = start_worker(stub.base_url)
    marker = tmp_path / "unpickled"
    pickled = app.send_task(TASK, args=(_WouldRunCode(marker),), serializer="pickle")
    wait_for(
        lambda: "Refusing to deserialize untrusted content of type pickle" in worker.log(),
        30,
        "the worker to log that it refused the pickle",
    )
    assert not marker.exists(), "the worker unpickled the message"
    assert queued_texts(clean_redis) == 0 and clean_redis.hlen("unacked") == 0
    assert not clean_redis.exists(f"celery-task-meta-{pickled.id}")
    _still_works(worker, app, "after the pickle")


# (what is wrong, args, kwargs, error type, message)
MALFORMED_CALLS = [
    ("text is an int", [123], {}, "EmbeddingInputTypeError", "text must be str, got int"),
    ("text is a dict", [{"a": 1}], {}, "EmbeddingInputTypeError", "text must be str, got dict"),
    ("text is empty", [""], {}, "EmbeddingInputError", "text is empty"),
    ("text is missing", [], {}, "TypeError", "missing 1 required positional argument: 'text'"),
    ("junk keyword", ["fine"], {"junk": 1}, "TypeError", "unexpected keyword argument 'junk'"),
    ("too many args", ["a", "m", "x"], {}, "TypeError", "takes from 2 to 3 positional"),
    ("model is a list", ["fine"], {"model": ["m"]}, "TypeError", "unhashable type: 'list'"),
]


def test_malformed_task_arguments_end_failure_with_a_clear_error_and_a_log_line(
    start_worker, stub, app
):
    worker = start_worker(stub.base_url)
    sent = {
        wrong: (app.send_task(TASK, args=args, kwargs=kwargs), kind, message)
        for wrong, args, kwargs, kind, message in MALFORMED_CALLS
    }
    wait_all_ready([result for result, _, _ in sent.values()], 60, "the malformed tasks")
    for wrong, (result, kind, message) in sent.items():
        assert result.state == "FAILURE", wrong
        assert type(result.result).__name__ == kind, wrong
        assert message in str(result.result), wrong
        # The result is stored before the worker logs the failure: wait for the line.
        line = f"{result.id}] raised unexpected: {kind}"
        wait_for(lambda line=line: line in worker.log(), 30, f"the log line for {wrong}")
    assert stub.stats()["calls"] == 0, "a malformed task reached the API"
    _still_works(worker, app, "after the malformed arguments")


def test_a_typed_error_from_a_malformed_task_is_rebuilt_for_the_caller(start_worker, stub, app):
    start_worker(stub.base_url)
    with pytest.raises(EmbeddingInputTypeError, match="must be str, got int"):
        app.send_task(TASK, args=[123]).get(timeout=30)


def test_messages_that_are_not_celery_tasks_are_logged_and_dropped_without_a_crash(
    start_worker, stub, app, clean_redis: redis.Redis
):
    worker = start_worker(stub.base_url)
    good_headers = {"lang": "py", "task": TASK, "id": str(uuid.uuid4()), "retries": 0}
    # A task name no worker knows.
    _raw_publish(TEST_REDIS_URL, [["x"], {}, {}], {**good_headers, "task": "no.such.task"})
    # A known task whose body is not [args, kwargs, embed].
    _raw_publish(TEST_REDIS_URL, "not a list", {**good_headers, "id": str(uuid.uuid4())})
    # No task headers at all.
    _raw_publish(TEST_REDIS_URL, {"hello": "world"}, None)
    # Not even JSON, though it claims to be.
    _raw_publish(TEST_REDIS_URL, b"\xff{not json", good_headers, content_type="application/json",
                 content_encoding="binary")  # fmt: skip
    wait_for(
        lambda: queued_texts(clean_redis) == 0 and clean_redis.hlen("unacked") == 0,
        30,
        "the worker to take and drop every malformed message",
    )
    log = worker.log()
    assert "Received unregistered task of type 'no.such.task'" in log
    assert "Received invalid task message" in log or "Can't decode message body" in log
    _still_works(worker, app, "after the garbage")
    assert stub.stats()["total_inputs"] == 1


def test_the_api_key_appears_in_no_log_argument_result_or_error_in_redis(
    app, clean_redis: redis.Redis, tmp_path: Path
):
    # The stub checks the key, so every successful call proves the key was in use.
    with StubServer(latency_ms=5, dimensions=DIMS, api_key=TEST_API_KEY) as stub:
        worker = WorkerProcess(
            worker_env(stub.base_url), tmp_path / "debug.log", "secrets", loglevel="DEBUG"
        )
        try:
            worker.wait_ready(app)
            stub.add_fault(status=503, count=2)
            texts = [f"secret-free {i}" for i in range(10)]
            results = [producers.enqueue_text(text, app=app) for text in texts]
            rejected = producers.enqueue_text("please __REJECT__ me", app=app)
            wait_all_ready([*results, rejected], 60, "the texts")
            assert outcomes(results, texts)["ok"] == texts
            with pytest.raises(EmbeddingAPIError):
                rejected.get(timeout=5)
            log = worker.log()
        finally:
            worker.stop()
    assert "embeddings call failed" in log and "DEBUG" in log, "not a DEBUG log with retries"
    assert TEST_API_KEY not in log
    assert TEST_API_KEY[:12] not in log, "a prefix of the key leaked"
    dump = all_redis_bytes(clean_redis)
    assert any(key.startswith(b"celery-task-meta-") for key in dump)
    leaked = [key for key, value in dump.items() if TEST_API_KEY.encode() in key + value]
    assert leaked == []


def test_every_result_expires_and_no_argument_is_copied_into_it(
    start_worker, stub, app, clean_redis: redis.Redis
):
    start_worker(stub.base_url)
    results = [producers.enqueue_text(f"short-lived {i}", app=app) for i in range(5)]
    failed = app.send_task(TASK, args=[""])
    wait_all_ready([*results, failed], 60, "the texts")
    keys = clean_redis.keys("celery-task-meta-*")
    assert len(keys) == 6
    for key in keys:
        ttl = clean_redis.ttl(key)
        assert 0 < ttl <= int(app.conf.result_expires), key
        meta = json.loads(clean_redis.get(key))
        assert "args" not in meta and "kwargs" not in meta


def test_a_password_protected_redis_url_works_end_to_end_and_the_password_is_not_logged(
    stub, tmp_path: Path
):
    password = "s3cret-redis-pw-" + uuid.uuid4().hex[:8]
    with RedisServer(tmp_path / "redis", password=password) as server:
        assert server.url.startswith(f"redis://:{password}@127.0.0.1:")
        app = app_for(server.url)
        env = worker_env(stub.base_url, {"REDIS_URL": server.url})
        worker = WorkerProcess(env, tmp_path / "worker.log", "password")
        try:
            worker.wait_ready(app)
            texts = [f"behind a password {i}" for i in range(5)]
            results = [producers.enqueue_text(text, app=app) for text in texts]
            wait_all_ready(results, 60, "the texts")
            assert outcomes(results, texts)["ok"] == texts
            log = worker.log()
        finally:
            worker.stop()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, socket_connect_timeout=1).ping()
    assert password not in log
    assert ":**@127.0.0.1" in log


def test_a_rediss_url_without_options_checks_certificates_on_both_sides():
    # Configuration only, no server contacted: kombu's own default for a bare rediss://
    # broker URL would skip the certificate check.
    probe = (
        "import json, ssl, worker; c = worker.app.connection_for_write(); "
        "b = worker.app.backend; "
        "print(json.dumps({'ssl': c.ssl, 'transport': type(c.transport).__module__, "
        "'backend_ssl': b.connparams.get('connection_class').__name__, "
        "'backend_reqs': str(b.connparams.get('ssl_cert_reqs'))}, default=str))"
    )
    # Celery's result side refuses a rediss:// URL without ssl_cert_reqs; kombu's broker side
    # takes one and, left alone, would not check the certificate.
    env = {
        **os.environ,
        "EMBEDDINGS_BROKER_URL": "rediss://:pw@redis.example:6380/0",
        "EMBEDDINGS_RESULT_BACKEND_URL": "rediss://:pw@redis.example:6380/0?ssl_cert_reqs=required",
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["ssl"] == {"ssl_cert_reqs": int(ssl.CERT_REQUIRED)}
    assert seen["transport"].startswith("worker.")
    assert seen["backend_ssl"] == "SSLConnection"
    assert seen["backend_reqs"] == str(int(ssl.CERT_REQUIRED))


def test_a_rediss_url_works_end_to_end_against_a_tls_redis_with_a_private_ca(stub, tmp_path: Path):
    with RedisServer(tmp_path / "tls", password="tls-pw", tls=True) as server:
        assert server.url.startswith("rediss://")
        with pytest.raises(redis.ConnectionError):
            # The TLS port refuses plaintext, so a success below went over TLS.
            redis.Redis(port=server.port, password="tls-pw", socket_timeout=2).ping()
        app = app_for(server.url)
        worker = WorkerProcess(
            worker_env(stub.base_url, {"REDIS_URL": server.url}), tmp_path / "worker.log", "tls"
        )
        try:
            worker.wait_ready(app)
            texts = [f"over TLS {i}" for i in range(5)]
            results = [producers.enqueue_text(text, app=app) for text in texts]
            wait_all_ready(results, 60, "the texts")
            assert outcomes(results, texts)["ok"] == texts
        finally:
            worker.stop()
