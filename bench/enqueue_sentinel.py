"""``scripts/bench enqueue-sentinel``: one producer thread's enqueue rate behind Redis Sentinel.

Starts a private master, replica and three Sentinels (the harness the Sentinel fault tests
use, ``tests/integration/sentinelkit.py``; it needs ``redis-server``), no worker. Each round
times, interleaved (a shared machine's load moves from second to second):

- ``enqueue_text`` once per text: one ``send_task`` per text, the path every list took
  behind Sentinel before the bulk path served it;
- ``enqueue_ids``: the bulk path, one ``MULTI``/``EXEC`` per 500 texts.

Each row is the median of the rounds. The queue is emptied after every timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis
from celery import Celery

from producers.client import enqueue_ids, enqueue_text
from tests.integration.faultkit import app_for
from tests.integration.sentinelkit import SentinelCluster
from worker.names import TASK_QUEUE

__all__ = ["main"]


def _timed(run: Callable[[], int], master: redis.Redis) -> float:
    """Texts per second of ``run``, which returns how many it enqueued; then empty the queue."""
    started = time.perf_counter()
    count = run()
    elapsed = time.perf_counter() - started
    queued = int(master.llen(TASK_QUEUE))
    master.delete(TASK_QUEUE)
    if queued != count:
        raise SystemExit(f"enqueue-sentinel: {count} enqueued but {queued} in the queue")
    return count / elapsed


def _rounds(
    app: Celery, master: redis.Redis, texts: Sequence[str], singles: int, rounds: int
) -> dict[str, float]:
    def one_by_one() -> int:
        for text in texts[:singles]:
            enqueue_text(text, app=app)
        return singles

    def bulk() -> int:
        return len(enqueue_ids(texts, app=app))

    rates: dict[str, list[float]] = {"one_by_one": [], "bulk": []}
    for _ in range(rounds):
        rates["one_by_one"].append(_timed(one_by_one, master))
        rates["bulk"].append(_timed(bulk, master))
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench enqueue-sentinel", description=__doc__)
    parser.add_argument("--texts", type=int, default=5000, help="texts per bulk timing")
    parser.add_argument("--singles", type=int, default=1000, help="texts sent one by one")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.texts, args.singles, args.rounds) < 1 or args.singles > args.texts:
        parser.error("--texts, --singles and --rounds must be positive, --singles <= --texts")
    texts = [f"sentinel bench {i}: the quick brown fox jumps" for i in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp, SentinelCluster(Path(tmp) / "s") as cluster:
        app = app_for(cluster.url)
        master = redis.Redis(port=cluster.master_port)
        enqueue_ids(texts[:10], app=app)  # connections and declarations, not timed
        master.delete(TASK_QUEUE)
        rates = _rounds(app, master, texts, args.singles, args.rounds)
    print(
        f"One producer thread behind Sentinel (master, replica, 3 Sentinels on loopback), "
        f"median of {args.rounds} interleaved rounds:"
    )
    print("| enqueue path | texts | texts/s | × one by one |")
    print("|---|---:|---:|---:|")
    base = rates["one_by_one"]
    print(f"| `enqueue_text` per text (one `send_task`) | {args.singles} | {base:,.0f} | 1.00 |")
    print(
        f"| `enqueue_ids` (one `MULTI`/`EXEC` per 500) | {args.texts} | {rates['bulk']:,.0f} | "
        f"{rates['bulk'] / base:.2f} |"
    )


if __name__ == "__main__":
    main()
