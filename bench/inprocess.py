"""Scenario (c): the in-process ``EmbeddingBatcher`` with no queue, in a process of its own.

Run as ``python -m bench.inprocess TEXTS_JSON IDLE_SAMPLES``; prints one JSON object. A
separate process keeps its CPU time and peak memory apart from the benchmark's own.
The backlog goes through ``embed_batch`` one ``batch_size`` chunk per task on ``pool_size``
threads, which is what ``embed_batch`` does with a whole list, but shows when each chunk
(so each text) is done.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.measure import cpu_seconds, peak_rss_bytes
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.settings import Settings


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        texts: list[str] = json.load(f)
    idle_samples = int(argv[1])
    config = EmbeddingConfig.from_settings(Settings.from_env())
    with EmbeddingBatcher(config) as batcher:
        idle_ms = []
        for i in range(idle_samples):
            started = time.perf_counter()
            batcher.embed_batch([f"idle sample {i}"])
            idle_ms.append((time.perf_counter() - started) * 1000)

        size = config.batch_size
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        load_ms: list[float] = []
        cpu_before = cpu_seconds([os.getpid()])
        started = time.perf_counter()

        def run(chunk: list[str]) -> None:
            vectors = batcher.embed_batch(chunk).embeddings
            assert len(vectors) == len(chunk)
            done_ms = (time.perf_counter() - started) * 1000
            load_ms.extend([done_ms] * len(chunk))

        with ThreadPoolExecutor(max_workers=config.pool_size) as pool:
            list(pool.map(run, chunks))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds([os.getpid()]) - cpu_before
    json.dump(
        {
            "idle_ms": idle_ms,
            "load_ms": load_ms,
            "elapsed_s": elapsed,
            "cpu_s": cpu,
            "peak_rss_bytes": peak_rss_bytes([os.getpid()]),
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
