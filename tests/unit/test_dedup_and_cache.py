"""Never pay twice: identical texts share one input, and the vector cache serves repeats."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator

import fakeredis
import httpx
import pytest
import redis

from worker.embeddings import EmbeddingBatcher, EmbeddingConfig
from worker.errors import EmbeddingConfigError
from worker.microbatcher import MicroBatcher
from worker.settings import Settings
from worker.vector_cache import VectorCache, cache_key
from worker.vector_codec import pack_vector, unpack_vector

MODEL = "text-embedding-3-small"


class API:
    """Answers like the API; records each call's inputs; ``hold`` keeps calls waiting."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.calls.append(list(body["input"]))
        self.started.set()
        self.hold.wait(5)
        data = [
            {"index": i, "embedding": vector(t, body["model"])} for i, t in enumerate(body["input"])
        ]
        return httpx.Response(200, json={"data": data, "usage": {"total_tokens": 1}})

    @property
    def inputs(self) -> int:
        return sum(map(len, self.calls))


def vector(text: str, model: str = MODEL) -> list[float]:
    # Exact in float32, so a vector read back from the cache compares equal.
    return [float(len(text)), float(sum(map(ord, text)) % 251), float(len(model))]


@pytest.fixture
def make_microbatcher() -> Iterator[Callable[..., MicroBatcher]]:
    made: list[MicroBatcher] = []

    def make(api: API, cache: VectorCache | None = None, pool_size: int = 3) -> MicroBatcher:
        cfg = EmbeddingConfig(
            base_url="http://stub.test/v1", api_key="sk-test", encoding_format="float",
            max_retries=0, pool_size=pool_size,
        )  # fmt: skip
        batcher = EmbeddingBatcher(cfg, transport=httpx.MockTransport(api))
        microbatcher = MicroBatcher(batcher, flush_interval_s=0.05, cache=cache)
        made.append(microbatcher)
        return microbatcher

    yield make
    for microbatcher in made:
        microbatcher.close(timeout_s=5)


def _cache(server: fakeredis.FakeServer | None = None, **settings: object) -> VectorCache:
    client = fakeredis.FakeRedis(server=server or fakeredis.FakeServer())
    options: dict[str, object] = {"base_url": "http://stub.test/v1"}
    options.update(settings)
    return VectorCache(client, Settings(**options))  # type: ignore[arg-type]


def test_identical_waiting_texts_go_to_the_api_as_one_input(make_microbatcher) -> None:
    api = API()
    api.hold.clear()
    microbatcher = make_microbatcher(api, pool_size=1)
    microbatcher.submit("warm-up")  # holds the only slot, so the rest wait together
    assert api.started.wait(5)
    futures = [microbatcher.submit(text) for text in ["a", "b", "a", "a", "c", "b"]]
    api.hold.set()
    assert [f.result(timeout=5) for f in futures] == [vector(t) for t in "abaacb"]
    assert api.calls == [["warm-up"], ["a", "b", "c"]]


def test_a_text_arriving_while_its_twin_is_in_a_call_joins_that_call(make_microbatcher) -> None:
    api = API()
    api.hold.clear()
    microbatcher = make_microbatcher(api)
    first = microbatcher.submit("twin")
    assert api.started.wait(5)
    second = microbatcher.submit("twin")
    api.hold.set()
    assert first.result(timeout=5) == second.result(timeout=5) == vector("twin")
    assert api.calls == [["twin"]]


def test_the_cache_serves_texts_embedded_before_with_no_call(make_microbatcher) -> None:
    api = API()
    cache = _cache()
    microbatcher = make_microbatcher(api, cache)
    texts = [f"text {i}" for i in range(20)]
    assert [f.result(timeout=5) for f in map(microbatcher.submit, texts)] == list(
        map(vector, texts)
    )
    first_inputs = api.inputs
    assert first_inputs == 20
    again = [microbatcher.submit(t).result(timeout=5) for t in texts]
    assert again == list(map(vector, texts))
    assert api.inputs == first_inputs  # nothing more was sent


def test_another_model_or_dimensions_never_reads_anothers_vector() -> None:
    base = cache_key("http://api/v1", MODEL, 0, "same text")
    assert cache_key("http://api/v1", "text-embedding-3-large", 0, "same text") != base
    assert cache_key("http://api/v1", MODEL, 256, "same text") != base
    assert cache_key("http://other/v1", MODEL, 0, "same text") != base
    assert cache_key("http://api/v1/", MODEL, 0, "same text") == base
    server = fakeredis.FakeServer()
    small, large = _cache(server), _cache(server)
    small.put_many(MODEL, [("same text", [1.0, 2.0])])
    assert large.get_many("text-embedding-3-large", ["same text"]) == [None]
    assert _cache(server, dimensions=256).get_many(MODEL, ["same text"]) == [None]
    assert small.get_many(MODEL, ["same text"]) == [[1.0, 2.0]]


def test_vectors_are_stored_as_base64_float32_with_the_ttl() -> None:
    server = fakeredis.FakeServer()
    cache = _cache(server, cache_ttl_s=3600)
    cache.put_many(MODEL, [("t", [0.5, -1.25, 3.0])])
    raw = fakeredis.FakeRedis(server=server).get(cache.key(MODEL, "t"))
    assert raw == pack_vector([0.5, -1.25, 3.0]) and len(raw) == 16  # 12 bytes, base64
    assert unpack_vector(raw) == [0.5, -1.25, 3.0]
    assert 3590 < fakeredis.FakeRedis(server=server).ttl(cache.key(MODEL, "t")) <= 3600


def test_with_the_cache_down_every_text_still_succeeds(make_microbatcher, caplog) -> None:
    api = API()
    down = VectorCache(
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=None),
        Settings(),
    )
    microbatcher = make_microbatcher(api, down)
    with caplog.at_level(logging.WARNING):
        texts = [f"text {i}" for i in range(30)]
        assert [microbatcher.submit(t).result(timeout=10) for t in texts] == list(
            map(vector, texts)
        )
    assert api.inputs == 30
    assert sum("vector cache is unreachable" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("cache_url", "broker"),
    [
        ("redis://localhost:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://localhost:6379", "redis://localhost:6379/0"),
        ("redis://cache-host:6379/3", "redis://cache-host:6379/3"),
    ],
)
def test_a_cache_in_the_brokers_database_is_refused_naming_the_variable(cache_url, broker) -> None:
    with pytest.raises(EmbeddingConfigError, match="EMBEDDINGS_CACHE_IN_BROKER_DB"):
        Settings(cache_url=cache_url, redis_url=broker)
    allowed = Settings(cache_url=cache_url, redis_url=broker, cache_in_broker_db=1)
    assert allowed.cache_url == cache_url


def test_a_cache_in_another_database_or_redis_is_accepted() -> None:
    assert Settings(cache_url="redis://localhost:6379/1", redis_url="redis://localhost:6379/0")
    assert Settings(cache_url="redis://cache:6379/0", broker_url="redis://redis:6379/0")
