"""The asyncio producers and the gateway behind Redis Sentinel, the master killed mid-run.

Three real Sentinels, a master and a replica on loopback (tests/integration/sentinelkit.py),
a real worker, and producers configured only with the ``sentinel://`` URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import GatewayProcess, WorkerProcess
from producers import AsyncProducer
from stubapi.vectors import vector_for
from tests.integration.faultkit import DIMS, IGNORE_RESULT_DEL_IN_OUTAGES, app_for
from tests.integration.harness import running_gateway
from tests.integration.sentinelkit import SentinelCluster

pytestmark = [
    pytest.mark.integration,
    IGNORE_RESULT_DEL_IN_OUTAGES,
]

KILLS = 2
CALLS_PER_KILL = 10
TEXTS_PER_CALL = 10
VISIBILITY_TIMEOUT_S = 10
# A text whose message died with the master's unacked copy comes back after the visibility
# timeout; the rest is the Sentinels' switch and the worker's reconnection.
WAIT_S = VISIBILITY_TIMEOUT_S + 80
GATEWAY_KEY = "gw-sentinel-key-3b1f"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path / "sentinel") as running:
        yield running


def _right(text: str, outcome: object) -> bool:
    # float32 on the wire: compared at that precision.
    return isinstance(outcome, list) and outcome == pytest.approx(
        vector_for(text, DIMS), rel=1e-6, abs=1e-7
    )


async def _until(condition: Any, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await loop.run_in_executor(None, condition):
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _timed(coro: Any) -> tuple[float, object]:
    started = time.monotonic()
    try:
        outcome: object = await coro
    except Exception as exc:  # counted as lost below, with its type shown
        outcome = exc
    return time.monotonic() - started, outcome


async def _failovers(cluster: SentinelCluster, stub: Any, producer: AsyncProducer) -> list[str]:
    """Kill the master ``KILLS`` times under load; return the texts that got no right vector."""
    loop = asyncio.get_running_loop()
    lost: list[str] = []
    for kill in range(KILLS):
        calls = stub.stats()["ok_calls"]
        batches = [
            [f"aio across failover {kill}, call {c}, text {i}" for i in range(TEXTS_PER_CALL)]
            for c in range(CALLS_PER_KILL)
        ]
        waiting = [
            asyncio.create_task(_timed(producer.embed_texts(batch, timeout=WAIT_S)))
            for batch in batches
        ]
        await _until(lambda c=calls: stub.stats()["ok_calls"] >= c + 3, 60, "progress")
        during = f"aio enqueued at failover {kill}"
        at_kill: dict[str, Future[tuple[float, object]]] = {}

        def on_killed(text: str = during, at_kill: dict[str, Any] = at_kill) -> None:
            # Right after the kill: the publish and the wait must ride out the switch.
            at_kill["wait"] = asyncio.run_coroutine_threadsafe(
                _timed(producer.embed_text(text, timeout=WAIT_S)), loop
            )

        switch_s = await loop.run_in_executor(None, lambda: cluster.kill_master(on_killed))
        during_s, during_outcome = await asyncio.wrap_future(at_kill["wait"])
        finished = await asyncio.gather(*waiting)
        if not _right(during, during_outcome):
            lost.append(f"{during!r}: {during_outcome!r}")
        for batch, (_, outcome) in zip(batches, finished, strict=True):
            if isinstance(outcome, BaseException):
                lost.extend(f"{text!r}: {outcome!r}" for text in batch)
            else:
                assert isinstance(outcome, list)
                lost.extend(t for t, o in zip(batch, outcome, strict=True) if not _right(t, o))
        slowest_s = max(seconds for seconds, _ in finished)
        print(f"\nkill {kill}: Sentinels switched in {switch_s:.1f}s; a text enqueued at the "
              f"kill got its vector after {during_s:.1f}s; the slowest of "
              f"{CALLS_PER_KILL} awaited calls in flight took {slowest_s:.1f}s")  # fmt: skip
    return lost


def test_an_async_producer_behind_sentinel_awaits_every_vector_through_master_kills(
    cluster: SentinelCluster, stub: Any, tmp_path: Path
) -> None:
    app = app_for(cluster.url)
    worker = WorkerProcess(
        cluster.worker_env(stub.base_url, VISIBILITY_TIMEOUT_S),
        tmp_path / "worker.log",
        "aio-sentinel",
    )

    async def main() -> list[str]:
        producer = AsyncProducer(app)
        try:
            first = [f"aio before any failover {i}" for i in range(20)]
            vectors = await producer.embed_texts(first, timeout=60)
            assert all(_right(t, v) for t, v in zip(first, vectors, strict=True))
            # 100 texts take the worker about 1.3 s at 300 ms per call: each kill lands mid-run.
            stub.set_latency_ms(300)
            return await _failovers(cluster, stub, producer)
        finally:
            await producer.aclose()

    try:
        worker.wait_ready(app)
        lost = asyncio.run(main())
        total = 20 + KILLS * (CALLS_PER_KILL * TEXTS_PER_CALL + 1)
        print(f"async producer behind Sentinel: {total} texts, {KILLS} failovers, lost {len(lost)}")
        assert lost == []
        assert worker.alive()
    finally:
        worker.stop()


def test_the_gateway_behind_sentinel_serves_requests_before_and_after_a_failover(
    cluster: SentinelCluster, stub: Any, tmp_path: Path
) -> None:
    app = app_for(cluster.url)
    worker = WorkerProcess(
        cluster.worker_env(stub.base_url, VISIBILITY_TIMEOUT_S),
        tmp_path / "worker.log",
        "gw-sentinel",
    )
    gateway_env = cluster.worker_env(
        stub.base_url,
        VISIBILITY_TIMEOUT_S,
        {"GATEWAY_API_KEYS": GATEWAY_KEY, "GATEWAY_REQUEST_TIMEOUT_S": "60"},
    )

    def embed(gateway: GatewayProcess, texts: list[str]) -> list[Any]:
        response = httpx.post(
            f"{gateway.base_url}/embeddings",
            json={"model": "text-embedding-3-small", "input": texts, "encoding_format": "float"},
            headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
            timeout=90,
        )
        assert response.status_code == 200, response.text
        return [item["embedding"] for item in response.json()["data"]]

    try:
        # The gateway starts while the worker does; both are ready before the first request.
        with running_gateway(gateway_env, tmp_path / "gateway.log") as gateway:
            worker.wait_ready(app)
            before = ["through the gateway", "behind Sentinel"]
            assert all(_right(t, v) for t, v in zip(before, embed(gateway, before), strict=True))
            switch_s = cluster.kill_master()
            after = ["after the failover", "still through the gateway"]
            started = time.monotonic()
            assert all(_right(t, v) for t, v in zip(after, embed(gateway, after), strict=True))
            print(f"\ngateway: Sentinels switched in {switch_s:.1f}s; the first request after "
                  f"the switch took {time.monotonic() - started:.1f}s")  # fmt: skip
            health = httpx.get(f"{gateway.url}/healthz", timeout=10).json()
            assert health["redis"] is True, health
            assert GATEWAY_KEY not in gateway.log()
    finally:
        worker.stop()
