"""``scripts/bench encoding``: float against base64 through the gateway, as openai-python sees it.

Starts the stub (1,536 dimensions), one worker and the gateway, then times
``client.embeddings.create(input=<N texts>, encoding_format=...)`` from openai-python,
alternating the two formats over ``--rounds`` rounds, new texts each round so every request
is embedded by the worker. Prints a markdown table of median and best seconds, and the
response's size in bytes. docs/gateway.md keeps the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from devstack import GatewayProcess, StubProcess, WorkerProcess

KEY = "bench-encoding-key"
MODEL = "text-embedding-3-small"
FORMATS = ("float", "base64")


def _env(redis_url: str, stub_url: str, dimensions: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDINGS_", "CELERY_"))}
    env.update(
        {
            "REDIS_URL": redis_url,
            "EMBEDDINGS_BASE_URL": stub_url,
            "EMBEDDINGS_API_KEY": "sk-bench",
            "EMBEDDINGS_DIMENSIONS": str(dimensions),
            "GATEWAY_API_KEYS": KEY,
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }
    )
    return env


def _response_bytes(url: str, texts: list[str], encoding: str) -> int:
    body = {"model": MODEL, "input": texts, "encoding_format": encoding}
    headers = {"Authorization": f"Bearer {KEY}"}
    return len(httpx.post(url + "/embeddings", json=body, headers=headers, timeout=120).content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench encoding", description=__doc__)
    parser.add_argument("--texts", type=int, default=100, help="texts per request")
    parser.add_argument("--rounds", type=int, default=5, help="requests per format")
    parser.add_argument("--dimensions", type=int, default=1536)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args(argv)
    os.environ["REDIS_URL"] = args.redis_url
    from worker import app

    logs = Path(tempfile.mkdtemp(prefix="bench-encoding-"))
    stub = StubProcess(logs / "stub.log", latency_ms=20, dimensions=args.dimensions)
    stub.wait_ready()
    env = _env(args.redis_url, stub.base_url, args.dimensions)
    worker = WorkerProcess(env, logs / "worker.log", name="encoding")
    gateway = GatewayProcess(env, logs / "gateway.log")
    seconds: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    sizes: dict[str, int] = {}
    try:
        worker.wait_ready(app)
        gateway.wait_ready()
        client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=120)
        run = time.time_ns()
        warm = [f"warm-up {run} {i}" for i in range(args.texts)]
        client.embeddings.create(model=MODEL, input=warm, encoding_format="float")
        for round_ in range(args.rounds):
            for fmt in FORMATS:
                texts = [f"{fmt} {run} round {round_} text {i}" for i in range(args.texts)]
                started = time.perf_counter()
                response = client.embeddings.create(model=MODEL, input=texts, encoding_format=fmt)
                seconds[fmt].append(time.perf_counter() - started)
                assert len(response.data) == args.texts
        for fmt in FORMATS:
            sizes[fmt] = _response_bytes(gateway.base_url, warm, fmt)
    finally:
        gateway.stop()
        worker.stop()
        stub.stop()
    print(
        f"{args.texts} texts x {args.dimensions} dimensions per request, openai-python "
        f"{openai.__version__}, {args.rounds} rounds, one worker, stub at 20 ms per call\n"
    )
    print("| encoding_format | median s | best s | response bytes |")
    print("|---|---|---|---|")
    for fmt in FORMATS:
        median, best = statistics.median(seconds[fmt]), min(seconds[fmt])
        print(f"| {fmt} | {median:.3f} | {best:.3f} | {sizes[fmt]:,} |")
    ratio = statistics.median(seconds["float"]) / statistics.median(seconds["base64"])
    print(f"\nfloat / base64 (medians): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
