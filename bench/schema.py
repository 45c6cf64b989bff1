"""``scripts/bench schema``: schemathesis, every check, against a live gateway's /openapi.json.

Starts the stub API, one worker and the gateway on one Redis database, runs ``schemathesis
run --checks all`` with the gateway's key, writes the full report to ``bench/out/schema.txt``
and prints the failures found (their codes and titles) and the summary. Exit status:
schemathesis's own (0: no failure).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack import REPO_ROOT, GatewayProcess, StubProcess, WorkerProcess

KEY = "bench-schema-key"
# Under the stub's (and OpenAI's) 8,192 tokens per input for any generated text.
MAX_TEXT_CHARS = 1000
DEFAULT_OUT = REPO_ROOT / "bench" / "out"
CONFIG = REPO_ROOT / "bench" / "schemathesis.toml"


def _env(redis_url: str, stub_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env.update(
        {
            "REDIS_URL": redis_url,
            "EMBEDDINGS_BASE_URL": stub_url,
            "EMBEDDINGS_API_KEY": "sk-bench",
            "EMBEDDINGS_DIMENSIONS": "16",
            "EMBEDDINGS_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
            "GATEWAY_API_KEYS": KEY,
            "GATEWAY_REQUEST_TIMEOUT_S": "30",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    return env


def schemathesis_command(url: str, max_examples: int, seed: int | None) -> list[str]:
    """The schemathesis run against the gateway at ``url``: every check, the gateway's key."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
        "run", f"{url}/openapi.json",
        "--checks", "all", "--header", f"Authorization: Bearer {KEY}",
        "--max-examples", str(max_examples), "--workers", "1",
        "--suppress-health-check", "all", "--no-color", "--generation-database", "none",
    ]  # fmt: skip
    if seed is not None:
        command += ["--seed", str(seed)]
    return command


def summary(report: str) -> str:
    """The failure headings and the summary of a schemathesis report."""
    lines = report.splitlines()
    failures = [line.strip() for line in lines if line.strip().startswith("- ST")]
    start = next((i for i, line in enumerate(lines) if "SUMMARY" in line), len(lines))
    return "\n".join([*dict.fromkeys(failures), *lines[start:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench schema", description=__doc__)
    parser.add_argument("--max-examples", type=int, default=100, help="per phase and operation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ["REDIS_URL"] = args.redis_url
    from worker import app

    logs = Path(tempfile.mkdtemp(prefix="bench-schema-"))
    stub = StubProcess(logs / "stub.log", latency_ms=5, dimensions=16)
    stub.wait_ready()
    env = _env(args.redis_url, stub.base_url)
    worker = WorkerProcess(env, logs / "worker.log", name="schema")
    gateway = GatewayProcess(env, logs / "gateway.log")
    try:
        worker.wait_ready(app)
        gateway.wait_ready()
        done = subprocess.run(
            schemathesis_command(gateway.url, args.max_examples, args.seed),
            cwd=logs,
            capture_output=True,
            text=True,
        )
    finally:
        gateway.stop()
        worker.stop()
        stub.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "schema.txt").write_text(done.stdout + done.stderr)
    print(summary(done.stdout))
    print(f"\nfull report: {args.out / 'schema.txt'}; logs: {logs}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
