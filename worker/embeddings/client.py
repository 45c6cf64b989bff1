"""One process's HTTP side: a keep-alive pool and one ``/embeddings`` call with retries.

The pool is created lazily and re-created after a fork, so a child never writes to
sockets it inherited from its parent.
"""

from __future__ import annotations

import logging
import os
import random as _random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import RetryCallState

from worker import metrics
from worker.embeddings.backoff import Random, Sleep, build_retrying
from worker.embeddings.config import EmbeddingConfig
from worker.embeddings.ratelimit_headers import (
    RateLimitHeaders,
    parse_rate_limit_headers,
    parse_retry_after,
    retry_hint_s,
)
from worker.errors import (
    EmbeddingAPIError,
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingPoolExhausted,
    EmbeddingRateLimitError,
    EmbeddingResponseError,
    EmbeddingRetryableError,
    EmbeddingServerError,
    EmbeddingTimeoutError,
)
from worker.vector_codec import unpack_vector

if TYPE_CHECKING:
    from worker.breaker import EmbeddingBreaker

__all__ = ["CallResult", "EmbeddingClient"]

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_API_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class CallResult:
    """The outcome of one successful API call: vectors in input order.

    ``rate_limits`` holds the response's ``x-ratelimit-*`` headers (empty when it had none).
    """

    embeddings: list[list[float]]
    usage: dict[str, int]
    retries: int
    latency_ms: float
    rate_limits: RateLimitHeaders = field(default_factory=RateLimitHeaders)


class EmbeddingClient:
    """Sends one batch per call to ``{base_url}/embeddings``; thread-safe, one per process.

    At most ``pool_size`` calls run at once; a call that waits longer than ``pool_timeout``
    for a slot raises ``EmbeddingPoolExhausted``. ``breaker`` (none by default; the Celery
    worker gives each process one) guards every call, retries included. With
    ``retry_rate_limits=False`` a 429 is raised at once instead of retried in process: the
    worker's shared budget then pauses the whole cluster instead. ``transport``, ``sleep``,
    ``random`` and ``clock`` are for tests.
    """

    def __init__(
        self,
        config: EmbeddingConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        random: Random = _random.random,
        clock: Callable[[], float] = time.time,
        breaker: EmbeddingBreaker | None = None,
        retry_rate_limits: bool = True,
    ) -> None:
        self.config = config
        self.breaker = breaker
        self.retry_rate_limits = retry_rate_limits
        self._transport = transport
        self._sleep = sleep
        self._random = random
        self._clock = clock
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None
        self._owner_pid = 0
        self._slots = threading.BoundedSemaphore(config.pool_size)

    def __repr__(self) -> str:
        return (
            f"EmbeddingClient(base_url={self.config.base_url!r}, pool_size={self.config.pool_size})"
        )

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None or self._owner_pid != os.getpid():
                # After a fork the inherited client is dropped, never closed: closing it
                # would shut sockets the parent is still using.
                self._http = self._new_http_client()
                self._owner_pid = os.getpid()
                self._slots = threading.BoundedSemaphore(self.config.pool_size)
            return self._http

    def _new_http_client(self) -> httpx.Client:
        cfg = self.config
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        return httpx.Client(
            base_url=cfg.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout, pool=cfg.pool_timeout),
            limits=httpx.Limits(
                max_connections=cfg.pool_size, max_keepalive_connections=cfg.pool_size
            ),
            transport=self._transport,
        )

    def close(self) -> None:
        """Close this process's pool; a later call opens a new one."""
        with self._lock:
            if self._http is not None and self._owner_pid == os.getpid():
                self._http.close()
            self._http = None

    def embed(self, texts: Sequence[str], model: str | None = None) -> CallResult:
        """Embed ``texts`` (at most ``batch_size``, already validated) in one call, retrying.

        Raises the typed error of the last failure once retries are spent.
        """
        model = model or self.config.model
        started = time.perf_counter()
        retries = 0

        def before_sleep(state: RetryCallState) -> None:
            nonlocal retries
            retries = state.attempt_number
            exc = state.outcome.exception() if state.outcome is not None else None
            metrics.RETRY.labels(attempt=str(retries), error_type=type(exc).__name__).inc()
            log.info("embeddings call failed (%s); retry %d", exc, retries)

        retrying = build_retrying(
            max_retries=self.config.max_retries,
            initial_s=self.config.initial_backoff,
            max_s=self.config.max_backoff,
            jitter_factor=self.config.jitter_factor,
            sleep=self._sleep,
            random=self._random,
            before_sleep=before_sleep,
            never_retry=() if self.retry_rate_limits else (EmbeddingRateLimitError,),
        )
        try:
            if self.breaker is None:
                vectors, usage, limits = retrying(self._attempt, texts, model)
            else:
                vectors, usage, limits = self.breaker.call(retrying, self._attempt, texts, model)
        except EmbeddingError as exc:
            metrics.FAILURE.labels(error_type=type(exc).__name__, retries=str(retries)).inc()
            if retries and isinstance(exc, EmbeddingRetryableError):
                raise type(exc)(
                    f"{exc.message} (after {retries} retries)", exc.status_code, exc.api_message
                ) from exc
            raise
        latency_ms = (time.perf_counter() - started) * 1000.0
        size = str(len(texts))
        metrics.SUCCESS.labels(batch_size=size, retries=str(retries)).inc()
        metrics.TEXTS.inc(len(texts))
        metrics.LATENCY_MS.labels(batch_size=size).observe(latency_ms)
        metrics.LATENCY_SECONDS.labels(batch_size=size).observe(latency_ms / 1000.0)
        metrics.BATCH_FILL.set(len(texts) / self.config.batch_size)
        return CallResult(vectors, usage, retries, latency_ms, limits)

    def _attempt(
        self, texts: Sequence[str], model: str
    ) -> tuple[list[list[float]], dict[str, int], RateLimitHeaders]:
        http = self._client()
        slots = self._slots
        if not slots.acquire(timeout=self.config.pool_timeout):
            metrics.POOL_EXHAUSTED.inc()
            raise EmbeddingPoolExhausted(
                f"no pooled connection freed up within {self.config.pool_timeout}s "
                f"(pool_size={self.config.pool_size})"
            )
        try:
            response = http.post("embeddings", json=self._body(texts, model))
        except httpx.PoolTimeout as exc:
            metrics.POOL_EXHAUSTED.inc()
            raise EmbeddingPoolExhausted(f"connection pool timed out: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise EmbeddingTimeoutError(
                f"the API did not answer within {self.config.timeout}s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise EmbeddingConnectionError(
                f"could not reach the API: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            slots.release()
        limits = parse_rate_limit_headers(response.headers)
        _observe_remaining(limits)
        if response.status_code != 200:
            raise self._status_error(response, limits)
        return (*_parse_response(response, len(texts)), limits)

    def _body(self, texts: Sequence[str], model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input": list(texts),
            "model": model,
            "encoding_format": self.config.encoding_format,
        }
        if self.config.dimensions:
            body["dimensions"] = self.config.dimensions
        return body

    def _status_error(self, response: httpx.Response, limits: RateLimitHeaders) -> EmbeddingError:
        status = response.status_code
        api_message = _api_message(response)
        message = f"the API answered {status} {response.reason_phrase}: {api_message}"
        error: EmbeddingRetryableError
        if status == 429:
            metrics.RATE_LIMITED.inc()
            error = EmbeddingRateLimitError(message, status, api_message)
        elif status in RETRYABLE_STATUSES:
            error = EmbeddingServerError(message, status, api_message)
        elif status == 408:
            # Request Timeout is the server's word for a timeout, and timeouts are retried.
            error = EmbeddingTimeoutError(message, status, api_message)
        else:
            return EmbeddingAPIError(message, status, api_message)
        if status == 429:
            hinted = retry_hint_s(response.headers, api_message, now=self._clock)
        else:
            hinted = parse_retry_after(response.headers, now=self._clock)
        if hinted is not None:
            error.retry_after_s = hinted
        if not limits.is_empty():
            error.rate_limits = limits
        # openai-python's convention: the server may veto or force a retry explicitly.
        if response.headers.get("x-should-retry", "").lower() == "false":
            error.should_retry = False
        return error


def _observe_remaining(limits: RateLimitHeaders) -> None:
    if limits.remaining_requests is not None:
        metrics.RATELIMIT_REMAINING.labels(kind="requests").set(limits.remaining_requests)
    if limits.remaining_tokens is not None:
        metrics.RATELIMIT_REMAINING.labels(kind="tokens").set(limits.remaining_tokens)


def _api_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:_MAX_API_MESSAGE_CHARS] or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_API_MESSAGE_CHARS]
        for key in ("error", "message", "detail"):
            if isinstance(payload.get(key), str):
                return str(payload[key])[:_MAX_API_MESSAGE_CHARS]
    return str(payload)[:_MAX_API_MESSAGE_CHARS]


def _parse_response(
    response: httpx.Response, expected: int
) -> tuple[list[list[float]], dict[str, int]]:
    try:
        payload = response.json()
        data = payload["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise EmbeddingResponseError(
            f"the API answered 200 without a JSON 'data' list: {exc}"
        ) from exc
    if not isinstance(data, list) or len(data) != expected:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise EmbeddingResponseError(f"the API returned {got} embeddings for {expected} inputs")
    vectors: list[list[float] | None] = [None] * expected
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < expected or vectors[index] is not None:
            raise EmbeddingResponseError(f"the API returned a bad or repeated index {index!r}")
        vectors[index] = _decode_vector(item.get("embedding"), index)
    dims = {len(v) for v in vectors if v is not None}
    if len(dims) != 1:
        raise EmbeddingResponseError(f"the API returned vectors of differing sizes {sorted(dims)}")
    usage_raw = payload.get("usage") or {}
    if not isinstance(usage_raw, dict):
        raise EmbeddingResponseError(f"the API returned a non-object usage {usage_raw!r}")
    usage = {k: int(v) for k, v in usage_raw.items() if isinstance(v, int)}
    return [v for v in vectors if v is not None], usage


def _decode_vector(raw: object, index: int) -> list[float]:
    if isinstance(raw, str):
        # encoding_format=base64: little-endian float32, 4x smaller than JSON floats.
        try:
            vector = unpack_vector(raw)
        except ValueError as exc:
            raise EmbeddingResponseError(f"embedding {index}: {exc}") from exc
        if not vector:
            raise EmbeddingResponseError(f"embedding {index} is empty")
        return vector
    if isinstance(raw, list) and raw and all(isinstance(x, (int, float)) for x in raw):
        return [float(x) for x in raw]
    raise EmbeddingResponseError(f"embedding {index} is neither a float list nor base64")
