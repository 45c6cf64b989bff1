"""Tests for the local OpenAI-compatible embeddings stub, over real HTTP on a free port."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx
import pytest

from stubapi import FaultPlan, FaultRule, StubConfig, StubServer, vector_for
from stubapi.__main__ import build_parser
from stubapi.faults import parse_fault
from stubapi.vectors import INVALID_INPUT_MESSAGE
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.errors import EmbeddingAPIError

DIMS = 8
MODEL = "text-embedding-3-small"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Every client here speaks plain HTTP, but httpx builds a TLS context per client, which
# costs tens of milliseconds; sharing one keeps the file fast.
_TLS = ssl.create_default_context()


def new_client(base_url: str = "", **options: Any) -> httpx.Client:
    options.setdefault("timeout", 5.0)
    return httpx.Client(base_url=base_url, verify=_TLS, **options)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for absolute URLs."""
    with new_client() as c:
        yield c


@pytest.fixture
def server() -> Iterator[StubServer]:
    with StubServer(host="127.0.0.1", port=0, latency_ms=0, dimensions=DIMS) as srv:
        yield srv


@pytest.fixture
def client(server: StubServer) -> Iterator[httpx.Client]:
    with new_client(server.base_url) as c:
        yield c


def embed(client: httpx.Client, texts: Any, **extra: Any) -> httpx.Response:
    return client.post("/embeddings", json={"input": texts, "model": MODEL, **extra})


def control(
    http: httpx.Client, server: StubServer, method: str, path: str, payload: Any = None
) -> httpx.Response:
    # Control endpoints live at the root, not under /v1.
    return http.request(method, f"{server.url}{path}", json=payload)


def wait_until(predicate: Any, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_vectors_are_deterministic_unit_length() -> None:
    first = vector_for("hello world", 1536)
    assert first == vector_for("hello world", 1536)
    assert len(first) == 1536
    assert math.fsum(x * x for x in first) == pytest.approx(1.0, abs=1e-6)
    assert vector_for("hello world!", 1536) != first
    assert len(vector_for("hello world", 3)) == 3
    assert vector_for("x", 1) in ([1.0], [-1.0])


def test_response_is_openai_shaped_and_matches_vector_for(client: httpx.Client) -> None:
    text = "The quick brown fox jumps over the lazy dog"
    response = embed(client, text)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert body["data"] == [
        {"object": "embedding", "index": 0, "embedding": vector_for(text, DIMS)}
    ]
    # cl100k_base, as OpenAI counts it: "The", " quick", " brown", … " dog".
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}


def test_indexes_match_input_order(client: httpx.Client) -> None:
    texts = [f"text {i}" for i in range(50)] + ["text 3"]
    body = embed(client, texts).json()
    assert [item["index"] for item in body["data"]] == list(range(51))
    assert [item["embedding"] for item in body["data"]] == [vector_for(t, DIMS) for t in texts]
    assert body["data"][3]["embedding"] == body["data"][50]["embedding"]
    assert body["usage"]["prompt_tokens"] == 51 * 3  # "text", " ", then up to 3 digits


def test_path_without_v1_prefix_is_also_served(http: httpx.Client, server: StubServer) -> None:
    response = http.post(f"{server.url}/embeddings", json={"input": "a", "model": MODEL})
    assert response.status_code == 200
    assert response.json()["data"][0]["embedding"] == vector_for("a", DIMS)


def test_request_dimensions_override_the_server_default(client: httpx.Client) -> None:
    body = embed(client, ["a", "b"], dimensions=32).json()
    assert [len(item["embedding"]) for item in body["data"]] == [32, 32]
    assert body["data"][1]["embedding"] == vector_for("b", 32)


def test_base64_encoding_decodes_to_same_floats(client: httpx.Client) -> None:
    texts = ["alpha", "beta"]
    data = embed(client, texts, encoding_format="base64").json()["data"]
    for text, item in zip(texts, data, strict=True):
        assert isinstance(item["embedding"], str)
        decoded = array("f")
        decoded.frombytes(base64.b64decode(item["embedding"]))
        if sys.byteorder != "little":
            decoded.byteswap()
        assert decoded.tolist() == array("f", vector_for(text, DIMS)).tolist()
        assert decoded.tolist() == pytest.approx(vector_for(text, DIMS), rel=1e-7)


@pytest.mark.parametrize("texts", ["", "   ", ["fine", ""], ["fine", " \n\t"]])
def test_empty_string_is_rejected_with_400(client: httpx.Client, texts: Any) -> None:
    response = embed(client, texts)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": INVALID_INPUT_MESSAGE,
            "type": "invalid_request_error",
            "param": "input",
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"model": MODEL}).encode(), "input"),
        (json.dumps({"input": 5, "model": MODEL}).encode(), "input"),
        (json.dumps({"input": [], "model": MODEL}).encode(), "input"),
        (json.dumps({"input": ["a", 3], "model": MODEL}).encode(), "input"),
        (json.dumps({"input": "a"}).encode(), "model"),
        (json.dumps({"input": "a", "model": 7}).encode(), "model"),
        (
            json.dumps({"input": "a", "model": MODEL, "encoding_format": "int8"}).encode(),
            "encoding_format",
        ),
        (json.dumps({"input": "a", "model": MODEL, "dimensions": 0}).encode(), "dimensions"),
        (json.dumps({"input": "a", "model": MODEL, "dimensions": "8"}).encode(), "dimensions"),
    ],
)
def test_malformed_requests_are_rejected_with_400(
    server: StubServer, client: httpx.Client, content: bytes, param: str | None
) -> None:
    response = client.post(
        "/embeddings", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert server.stats()["failed_calls"] == 1


def test_more_than_2048_inputs_is_rejected(client: httpx.Client) -> None:
    too_many = embed(client, [f"t{i}" for i in range(2049)])
    assert too_many.status_code == 400
    assert "2048" in too_many.json()["error"]["message"]
    assert too_many.json()["error"]["param"] == "input"
    at_limit = embed(client, [f"t{i}" for i in range(2048)])
    assert at_limit.status_code == 200
    assert len(at_limit.json()["data"]) == 2048


def test_poison_text_rejects_whole_call_without_naming_index(
    server: StubServer, client: httpx.Client
) -> None:
    texts = ["fine", "also fine", "bad __REJECT__ text", "more"]
    response = embed(client, texts)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "disallowed" in message
    assert not any(ch.isdigit() for ch in message) and "index" not in message.lower()
    assert embed(client, [t for t in texts if "__REJECT__" not in t]).status_code == 200
    server.configure(reject_substring="BLOCKED")
    assert embed(client, ["xBLOCKEDx"]).status_code == 400
    assert embed(client, ["__REJECT__"]).status_code == 200
    assert server.stats()["inputs_per_call"] == [3, 1]


def test_an_input_over_8192_tokens_fails_the_whole_call_with_openais_400(
    server: StubServer, client: httpx.Client
) -> None:
    at_limit = "a" + " a" * 8191  # 8,192 cl100k_base tokens: "a", then " a" each
    over = at_limit + " a"
    response = embed(client, ["fine", over])
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Invalid 'input': maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    served = embed(client, ["fine", at_limit])
    assert served.status_code == 200
    assert served.json()["usage"]["total_tokens"] == 1 + 8192
    assert server.stats()["inputs_per_call"] == [2]


def test_the_workers_client_isolates_an_over_long_input_and_embeds_its_neighbours(
    server: StubServer,
) -> None:
    config = EmbeddingConfig(
        base_url=server.base_url, api_key="sk-test", encoding_format="float", max_retries=0
    )
    texts = [f"neighbour {i}" for i in range(7)] + ["a" + " a" * 8192]  # 8,193 tokens
    with EmbeddingBatcher(config) as batcher:
        outcomes = batcher.embed_isolated(texts, MODEL)
    assert outcomes[:7] == [vector_for(t, DIMS) for t in texts[:7]]
    rejected = outcomes[7]
    assert isinstance(rejected, EmbeddingAPIError)
    assert rejected.status_code == 400
    assert rejected.api_message is not None and "8192 tokens" in rejected.api_message


def test_429_fault_sets_retry_after_and_is_consumed(
    server: StubServer, client: httpx.Client
) -> None:
    server.add_fault(status=429, count=2, retry_after="1", retry_after_ms="250")
    server.add_fault(status=429)
    for _ in range(2):
        limited = embed(client, "a")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert limited.headers["retry-after-ms"] == "250"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    bare = embed(client, "a")
    assert bare.status_code == 429
    assert "retry-after" not in bare.headers and "retry-after-ms" not in bare.headers
    assert embed(client, "a").status_code == 200
    assert server.pending_faults() == []


def test_server_error_faults_are_consumed_in_fifo_order(
    server: StubServer, client: httpx.Client
) -> None:
    server.add_fault(status=500)
    server.add_fault(status=502, count=2)
    server.add_fault(status=503)
    server.add_fault(status=504)
    statuses = [embed(client, "a").status_code for _ in range(6)]
    assert statuses == [500, 502, 502, 503, 504, 200]
    stats = server.stats()
    assert (stats["calls"], stats["ok_calls"], stats["failed_calls"]) == (6, 1, 5)


def test_hang_fault_triggers_client_read_timeout(server: StubServer) -> None:
    server.add_fault(hang_s=1.0, count=1)
    with new_client(server.base_url, timeout=httpx.Timeout(5.0, read=0.2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            embed(c, "a")
        assert embed(c, "a").status_code == 200


def test_outage_fails_for_duration_then_recovers(server: StubServer, client: httpx.Client) -> None:
    started = time.monotonic()
    server.add_fault(status=503, duration_s=0.3)
    statuses: list[int] = []
    while not statuses or statuses[-1] != 200:
        assert time.monotonic() - started < 3.0, f"outage never ended: {statuses[-5:]}"
        statuses.append(embed(client, "a").status_code)
        time.sleep(0.02)
    assert time.monotonic() - started >= 0.3
    assert statuses[0] == 503 and set(statuses[:-1]) == {503} and len(statuses) >= 2
    assert server.pending_faults() == []


def test_unlimited_count_fault_persists_until_reset(
    server: StubServer, client: httpx.Client
) -> None:
    server.add_fault(status=500, count=-1)
    assert [embed(client, "a").status_code for _ in range(5)] == [500] * 5
    server.reset()
    assert embed(client, "a").status_code == 200
    assert server.stats()["calls"] == 1


def test_fault_plan_runs_queued_outages_back_to_back() -> None:
    now = [100.0]
    plan = FaultPlan(clock=lambda: now[0])
    plan.add(FaultRule(status=503, duration_s=10))
    plan.add(FaultRule(status=500))
    plan.add(FaultRule(status=502, duration_s=5))
    seen = []
    for t in (101.0, 109.9, 110.0, 110.0, 114.9, 115.0):
        now[0] = t
        rule = plan.take()
        seen.append(rule.status if rule else None)
    assert seen == [503, 503, 500, 502, 502, None]
    assert len(plan) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 1},
        {"status": 200},
        {"status": 503, "count": 2, "duration_s": 1.0},
        {"status": 503, "count": 0},
        {"status": 503, "duration_s": 0},
        {"hang_s": -1.0},
    ],
)
def test_invalid_fault_rules_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultRule(**kwargs)


def test_stats_count_calls_inputs_and_peak_concurrency(
    http: httpx.Client, server: StubServer
) -> None:
    server.set_latency_ms(100)
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def call(i: int) -> None:
        texts = ["shared"] + [f"t{i}-{j}" for j in range(i)]
        with new_client(server.base_url) as c:
            barrier.wait()
            statuses.append(embed(c, texts).status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert statuses == [200] * 4
    with new_client(server.base_url) as c:
        assert embed(c, []).status_code == 400
    stats = server.stats()
    assert stats["calls"] == 5
    assert stats["ok_calls"] == 4
    assert stats["failed_calls"] == 1
    assert sorted(stats["inputs_per_call"]) == [1, 2, 3, 4]
    assert stats["total_inputs"] == 10
    assert stats["texts_seen"] == 7  # distinct texts: "shared" plus 0 + 1 + 2 + 3 others
    assert stats["peak_concurrency"] >= 2
    assert stats["current_concurrency"] == 0
    assert control(http, server, "GET", "/_stub/stats").json() == stats


def test_latency_is_applied_and_changeable_at_runtime(
    http: httpx.Client, server: StubServer, client: httpx.Client
) -> None:
    assert control(http, server, "POST", "/_stub/faults", {"latency_ms": 200}).status_code == 200
    assert control(http, server, "GET", "/_stub/config").json()["latency_ms"] == 200
    assert server.pending_faults() == []  # a bare latency change queues no fault
    started = time.monotonic()
    assert embed(client, "a").status_code == 200
    assert time.monotonic() - started >= 0.2
    server.set_latency_ms(0)
    assert server.config.latency_ms == 0


def test_auth_required_when_api_key_configured(http: httpx.Client) -> None:
    key = "sk-secret-123"
    with StubServer(dimensions=DIMS, api_key=key) as srv:
        url = f"{srv.base_url}/embeddings"
        payload = {"input": "a", "model": MODEL}
        missing = http.post(url, json=payload)
        wrong = http.post(url, json=payload, headers={"Authorization": "Bearer sk-wrong"})
        right = http.post(url, json=payload, headers={"Authorization": f"Bearer {key}"})
        assert missing.status_code == wrong.status_code == 401
        assert missing.json()["error"]["message"] == "Incorrect API key provided"
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.json()["error"]["type"] == "invalid_request_error"
        assert right.status_code == 200
        assert (srv.stats()["ok_calls"], srv.stats()["failed_calls"]) == (1, 2)
        assert key not in repr(srv.config)
        assert key not in control(http, srv, "GET", "/_stub/config").text


def test_http_fault_endpoint_and_reset(
    http: httpx.Client, server: StubServer, client: httpx.Client
) -> None:
    first = control(
        http, server, "POST", "/_stub/faults", {"status": 429, "count": 1, "retry_after": 2}
    )
    assert first.status_code == 200
    assert first.json()["faults"] == [
        {"status": 429, "count": 1, "retry_after": "2", "remaining_calls": 1}
    ]
    more = control(
        http, server, "POST", "/_stub/faults", [{"status": 500}, {"hang_s": 0.05, "count": 1}]
    )
    assert len(more.json()["faults"]) == 3
    assert len(control(http, server, "GET", "/_stub/faults").json()["faults"]) == 3
    limited = embed(client, "a")
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
    assert embed(client, "a").status_code == 500
    assert embed(client, "a").status_code == 200  # the hang-only rule delays, then answers
    control(http, server, "POST", "/_stub/faults", {"faults": [{"status": 503, "count": -1}]})
    assert embed(client, "a").status_code == 503
    assert control(http, server, "POST", "/_stub/reset").json() == {"ok": True}
    assert embed(client, "a").status_code == 200
    assert server.stats()["calls"] == 1
    for bad in ({"status": 200}, {"bogus": 1}, {"status": 503, "count": 1, "duration_s": 1}):
        assert control(http, server, "POST", "/_stub/faults", bad).status_code == 400
    not_json = http.post(f"{server.url}/_stub/faults", content=b"nope")
    assert not_json.status_code == 400


def test_http_config_endpoint_changes_settings_until_reset(
    http: httpx.Client, server: StubServer, client: httpx.Client
) -> None:
    changes = {"dimensions": 4, "reject_substring": "XX", "latency_ms": 1}
    listed = control(http, server, "POST", "/_stub/config", changes).json()
    assert {key: listed[key] for key in changes} == changes
    assert len(embed(client, "a").json()["data"][0]["embedding"]) == 4
    assert embed(client, "aXXb").status_code == 400
    assert control(http, server, "POST", "/_stub/config", {"api_key": "x"}).status_code == 400
    assert control(http, server, "POST", "/_stub/config", {"dimensions": "4"}).status_code == 400
    server.reset()
    assert len(embed(client, "a").json()["data"][0]["embedding"]) == DIMS


def test_unknown_path_returns_404_json(http: httpx.Client, server: StubServer) -> None:
    missing = control(http, server, "GET", "/v1/models")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert control(http, server, "GET", "/v1/embeddings").status_code == 405
    assert control(http, server, "GET", "/_stub/health").json() == {"ok": True}


def test_keep_alive_connection_survives_errors(server: StubServer) -> None:
    conn = HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        statuses = []
        sockets = []
        for body in (b"{bad json", json.dumps({"input": "a", "model": MODEL}).encode()):
            conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.getheader("Content-Length") == str(len(response.read()))
            statuses.append(response.status)
            sockets.append(conn.sock)
        assert statuses == [400, 200]
        assert sockets[0] is not None and sockets[0] is sockets[1]
    finally:
        conn.close()


def test_stop_is_prompt_despite_hanging_call_and_idle_connection() -> None:
    srv = StubServer(dimensions=DIMS).start()
    port = srv.port
    srv.add_fault(hang_s=30.0)
    outcome: list[object] = []

    def hanging_call() -> None:
        with new_client(srv.base_url) as c:
            try:
                outcome.append(embed(c, "a"))
            except httpx.HTTPError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=hanging_call)
    caller.start()
    idle = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        idle.request("GET", "/_stub/health")
        idle.getresponse().read()
        wait_until(lambda: srv.stats()["current_concurrency"] == 1)
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 2.0
    finally:
        idle.close()
    caller.join(5)
    assert not caller.is_alive() and len(outcome) == 1
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_config_and_cli_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUB_API_PORT", "1234")
    monkeypatch.setenv("STUB_API_LATENCY_MS", "7")
    monkeypatch.setenv("STUB_API_DIMENSIONS", "64")
    monkeypatch.delenv("STUB_API_HOST", raising=False)
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.latency_ms, args.dimensions) == ("127.0.0.1", 1234, 7.0, 64)
    assert build_parser().parse_args(["--port", "99"]).port == 99
    with pytest.raises(ValueError):
        StubConfig(dimensions=0)
    assert parse_fault({"status": 503, "retry_after": 1}).retry_after == "1"


def test_cli_prints_listening_line(http: httpx.Client) -> None:
    key = "sk-cli-secret"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUB_API_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["STUB_API_DIMENSIONS"] = "12"
    argv = [sys.executable, "-m", "stubapi", "--port", "0", "--latency-ms", "0", "--api-key", key]
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10.0)
        assert ready, "the CLI printed nothing within 10 s"
        line = proc.stdout.readline().rstrip("\n")
        match = re.fullmatch(r"stub API listening on (http://127\.0\.0\.1:(\d+)/v1)", line)
        assert match and int(match.group(2)) > 0, line
        response = http.post(
            f"{match.group(1)}/embeddings",
            json={"input": "a", "model": MODEL},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert len(response.json()["data"][0]["embedding"]) == 12
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
        assert key not in line + out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
