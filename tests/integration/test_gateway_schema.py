"""schemathesis, every check, against the gateway's /openapi.json, a real worker and the stub."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.schema import KEY, MAX_TEXT_CHARS, schemathesis_command, summary
from tests.integration.harness import NO_API_URL, running_gateway, worker_env

pytestmark = pytest.mark.integration

# A few examples per operation and phase keep the run to seconds; `scripts/bench schema`
# runs 100 (docs/gateway.md has its result).
MAX_EXAMPLES = 5


@pytest.fixture
def gateway(clean_redis: redis.Redis, tmp_path: Path) -> Iterator[Any]:
    env = worker_env(
        NO_API_URL,
        {
            "GATEWAY_API_KEYS": KEY,
            "EMBEDDINGS_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
            "GATEWAY_REQUEST_TIMEOUT_S": "30",
        },
    )
    with running_gateway(env, tmp_path / "gateway.log") as process:
        yield process


def test_schemathesis_with_every_check_finds_the_gateway_true_to_its_schema(
    start_worker, stub, gateway, tmp_path
) -> None:
    start_worker(stub.base_url, {"EMBEDDINGS_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS)})
    command = schemathesis_command(gateway.url, MAX_EXAMPLES, seed=1)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "generated" in done.stdout
    # One known gap, and only it: a token array decodes to a text, and a text that is
    # whitespace-only, holds a NUL or is longer than EMBEDDINGS_MAX_TEXT_CHARS is refused
    # (the workers would refuse it too), which JSON Schema cannot express (docs/gateway.md,
    # "Token arrays"). Any other failure, or this one for a string input, fails the test.
    unexplained = [
        block for block in _failures(done.stdout) if not _decoded_token_array_refused(block)
    ]
    assert not unexplained, summary(done.stdout)[-4000:] + "\n\n".join(unexplained)[:4000]


def _failures(report: str) -> list[str]:
    """Each failure's block of a schemathesis report: its heading to the next heading."""
    blocks: list[str] = []
    for line in report.splitlines():
        if line.strip().startswith("- ST"):
            blocks.append(line)
        elif blocks and "SUMMARY" not in line:
            blocks[-1] += "\n" + line
    return blocks


def _decoded_token_array_refused(block: str) -> bool:
    return block.strip().startswith("- ST202 ") and "token array at index" in block
