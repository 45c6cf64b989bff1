"""The seed's acceptance numbers, against the real stub API over HTTP.

Runs under unittest (``python3 -m unittest tests.perf.test_embedding_batch -v``) and pytest.
"""

from __future__ import annotations

import unittest

from stubapi import StubServer
from stubapi.vectors import vector_for
from worker.embeddings import EmbeddingBatcher, EmbeddingConfig, embed_texts
from worker.embeddings import batcher as batcher_module

DIMS = 32


class _StubTestCase(unittest.TestCase):
    stub: StubServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.stub = StubServer(host="127.0.0.1", port=0, latency_ms=5, dimensions=DIMS)
        cls.stub.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.stub.stop()

    def setUp(self) -> None:
        self.stub.reset()
        self.batcher = EmbeddingBatcher(
            EmbeddingConfig(base_url=self.stub.base_url, api_key="sk-perf-test", dimensions=DIMS)
        )

    def tearDown(self) -> None:
        self.batcher.close()


class TestAcceptanceCriteria(_StubTestCase):
    """The seed's table: network calls per number of texts, and the efficiency it implies."""

    def assert_calls(self, n_texts: int, expected_calls: int) -> None:
        texts = [f"acceptance text {i}" for i in range(n_texts)]
        result = self.batcher.embed_batch(texts)
        stats = self.stub.stats()
        self.assertEqual(result.batch_size, expected_calls)
        self.assertEqual(stats["ok_calls"], expected_calls)
        self.assertTrue(all(n <= 8 for n in stats["inputs_per_call"]))
        self.assertEqual(len(result.embeddings), n_texts)
        for text, vector in zip(texts, result.embeddings, strict=True):
            for got, want in zip(vector, vector_for(text, DIMS), strict=True):
                self.assertAlmostEqual(got, want, places=6)

    def test_8_texts_take_1_call(self) -> None:
        self.assert_calls(8, 1)

    def test_24_texts_take_3_calls(self) -> None:
        self.assert_calls(24, 3)

    def test_100_texts_take_13_calls(self) -> None:
        self.assert_calls(100, 13)

    def test_efficiency_is_about_8x(self) -> None:
        result = self.batcher.embed_batch([f"t{i}" for i in range(96)])
        self.assertEqual(96 / result.batch_size, 8.0)

    def test_no_retries_against_a_healthy_api(self) -> None:
        result = self.batcher.embed_batch(["a", "b"])
        self.assertEqual(result.retries, 0)
        self.assertGreater(result.usage.get("total_tokens", 0), 0)

    def test_calls_run_concurrently_over_a_pool_of_three(self) -> None:
        self.stub.set_latency_ms(100)
        self.batcher.embed_batch([f"t{i}" for i in range(48)])
        self.assertEqual(self.stub.stats()["peak_concurrency"], 3)


class TestModuleFunctions(_StubTestCase):
    """``embed_texts`` uses one default batcher per process."""

    def test_embed_texts_uses_the_default_batcher(self) -> None:
        batcher_module._default_batcher = self.batcher
        try:
            vectors = embed_texts([f"x{i}" for i in range(24)])
        finally:
            batcher_module._default_batcher = None
        self.assertEqual(len(vectors), 24)
        self.assertEqual(self.stub.stats()["ok_calls"], 3)


if __name__ == "__main__":
    unittest.main()
