"""Typed settings, their defaults, and the one place that reads the environment.

Every setting has a named default below, with its unit in the name. ``Settings.from_env()``
reads ``EMBEDDINGS_*`` and the Redis, broker and Celery worker variables (``env_variable``
names each field's variable), and fails at start-up with the variable's name when a value is
bad, so a typo never surfaces as a confusing error mid-run. Nothing else reads them: the
Celery configuration (``worker.celery_ext.config``), ``EmbeddingConfig`` and the gateway's
``GatewaySettings`` are built from a ``Settings``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TypeVar
from urllib.parse import urlsplit

from worker.errors import EmbeddingConfigError
from worker.flush_policy import FlushPolicy
from worker.tokens import ENCODINGS, ESTIMATE, MAX_INPUT_TOKENS, MODEL_ENCODINGS

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_REDIS_URL",
    "ENV_PREFIX",
    "Settings",
    "env_float",
    "env_int",
    "env_str",
    "env_variable",
    "read_env_setting",
]

ENV_PREFIX = "EMBEDDINGS_"

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# The name Sentinels monitor the master under (``sentinel monitor NAME …``).
DEFAULT_REDIS_SENTINEL_MASTER = "mymaster"
# Sentinel's own defaults (down-after-milliseconds 30 s, failover-timeout 180 s) switch in
# far longer; tuned deployments switch within ~10 s, the bound producers retry a publish.
DEFAULT_REDIS_FAILOVER_TIMEOUT_S = 10.0
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "text-embedding-3-small"
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_RETRIES = 3
DEFAULT_INITIAL_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 32.0
DEFAULT_JITTER_FACTOR = 0.2
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_POOL_SIZE = 3
DEFAULT_POOL_TIMEOUT_S = 60.0
# OpenAI allows 8,192 tokens per input; English averages about 4 characters a token.
DEFAULT_MAX_TEXT_CHARS = 32_768
# OpenAI's limits per input and per request, checked before a text is enqueued
# (worker/validation.py); 0 turns either check off.
DEFAULT_MAX_INPUT_TOKENS = MAX_INPUT_TOKENS
DEFAULT_MAX_REQUEST_TOKENS = 300_000
# Texts one embed_texts / aembed_texts call waits for: the API's (and the gateway's) 2,048
# inputs per request. A bigger list is a backfill: embed-file, or enqueue_texts + wait_all.
DEFAULT_MAX_TEXTS_PER_CALL = 2048
DEFAULT_FLUSH_INTERVAL_S = 0.1
# When a partial batch leaves before flush_interval_s; see worker/flush_policy.py.
DEFAULT_FLUSH_POLICY = "nagle"
FLUSH_POLICIES = tuple(policy.value for policy in FlushPolicy)
DEFAULT_ENCODING_FORMAT = "base64"
DEFAULT_TASK_MAX_RETRIES = 12
DEFAULT_TASK_RETRY_BACKOFF_S = 2.0
DEFAULT_TASK_RETRY_BACKOFF_MAX_S = 60.0
DEFAULT_BREAKER_FAIL_MAX = 5
DEFAULT_BREAKER_RESET_TIMEOUT_S = 30.0
DEFAULT_VISIBILITY_TIMEOUT_S = 900
DEFAULT_RESULT_EXPIRES_S = 86_400
# A Redis command unanswered this long means a hung or unreachable Redis: fail (and retry)
# rather than wait, so a producer's enqueue errors within seconds instead of minutes.
DEFAULT_REDIS_SOCKET_TIMEOUT_S = 3.0
# Retries of one result-store operation: a producer's result subscription (a second apart;
# Celery's 20 would hold an enqueue 20 s) and a worker's reads and writes (0.1 s to 2 s apart).
DEFAULT_RESULT_BACKEND_MAX_RETRIES = 5
# Every interface, so a scraper in another container or host reaches the worker.
DEFAULT_METRICS_ADDR = "0.0.0.0"
# The shared rate-limit budget (worker/budget): a call waits at most this long for budget
# before its texts become Celery retries; past it, a pause of minutes should not hold threads.
DEFAULT_LIMITER_MAX_WAIT_S = 30.0
# 0 means not configured: the budget learns each model's limit from the API's headers.
DEFAULT_RPM_LIMIT = 0
DEFAULT_TPM_LIMIT = 0
DEFAULT_MODEL_LIMITS = ""  # "model=RPM:TPM,other-model=RPM:TPM"
DEFAULT_SHARED_BUDGET = 1  # 0 turns it off: each process backs off on its own, as the seed does
DEFAULT_LIMITER_URL = ""  # empty: the broker's Redis (or the result backend's)
# Token encodings per model (worker/tokens): "" keeps the built-in table (OpenAI's embedding
# models count cl100k_base exactly, any other model the estimate); see Settings.encoding_for.
DEFAULT_TOKENIZER = ""  # "MODEL=ENCODING,…", and at most one bare ENCODING for the rest
# The vector cache (worker/vector_cache.py): off unless a Redis is named for it.
DEFAULT_CACHE_URL = ""
DEFAULT_CACHE_TTL_S = 30 * 86_400
# The broker's database runs noeviction and a cache must evict: sharing it is opt-in.
DEFAULT_CACHE_IN_BROKER_DB = 0
# Texts stay out of task metadata (Flower, events, `celery inspect`): see worker/redaction.py.
DEFAULT_SHOW_TEXTS = 0
# Fraction of a configured or learned limit left unused, so calls spaced by the budget still
# fit a provider's per-second quantization when they arrive a few milliseconds apart.
DEFAULT_LIMIT_HEADROOM = 0.05
# The share of budget-bound calls bulk keeps while interactive texts wait for the same budget
# (docs/lanes.md): a fifth keeps a backfill moving under a saturating web load, and costs a
# waiting interactive text at most one call's spacing in five.
DEFAULT_BULK_FLOOR_SHARE = 0.2
# The unacked-restore sweep runs this often; keep it a small fraction of the visibility timeout.
DEFAULT_UNACKED_RESTORE_INTERVAL_S = 5
# One process holds many waiting texts, so the micro-batcher can fill its calls.
DEFAULT_WORKER_POOL = "threads"
# One message reserved per thread: every text a worker holds is in its micro-batcher, where
# interactive texts go first, none in the thread pool's first-come queue (docs/lanes.md).
DEFAULT_WORKER_PREFETCH_MULTIPLIER = 1
# `embed-file --batch-api` (producers/batch_api, docs/batch-api.md). OpenAI's limits per batch:
# requests per input file, embedding inputs across a batch's requests, bytes per input file.
BATCH_API_MAX_REQUESTS = 50_000
BATCH_API_MAX_INPUTS = 50_000
BATCH_API_MAX_FILE_BYTES = 200_000_000
DEFAULT_BATCH_MAX_REQUESTS = BATCH_API_MAX_REQUESTS
DEFAULT_BATCH_MAX_INPUTS = BATCH_API_MAX_INPUTS
DEFAULT_BATCH_MAX_FILE_BYTES = BATCH_API_MAX_FILE_BYTES
# Batches take minutes to hours: a poll every half minute costs nothing and shows progress.
DEFAULT_BATCH_POLL_INTERVAL_S = 30.0
# A line's submissions, counting resubmissions after its batch expired or failed.
DEFAULT_BATCH_MAX_ATTEMPTS = 3
# US dollars per million input tokens, MODEL=ONLINE:BATCH (OpenAI's list prices, 2025).
DEFAULT_PRICE_TABLE = (
    "text-embedding-3-small=0.02:0.01,text-embedding-3-large=0.13:0.065,"
    "text-embedding-ada-002=0.10:0.05"
)

# Settings read from variables other than EMBEDDINGS_<FIELD>: Redis's, kombu's and Celery's
# own names, which operators already know.
_OTHER_ENV_NAMES = {
    "visibility_timeout_s": "BROKER_VISIBILITY_TIMEOUT",
    "redis_url": "REDIS_URL",
    "redis_sentinel_master": "REDIS_SENTINEL_MASTER",
    "redis_sentinel_password": "REDIS_SENTINEL_PASSWORD",
    "unacked_restore_interval_s": "BROKER_UNACKED_RESTORE_INTERVAL",
    "worker_pool": "CELERY_WORKER_POOL",
    "worker_concurrency": "CELERY_WORKER_CONCURRENCY",
    "worker_prefetch_multiplier": "CELERY_WORKER_PREFETCH_MULTIPLIER",
}

_T = TypeVar("_T")


def _read(
    name: str, default: _T, parse: Callable[[str], _T], environ: Mapping[str, str] | None
) -> _T:
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw.strip())
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        return value
    except ValueError as exc:
        raise EmbeddingConfigError(f"{name}={raw!r} is invalid: {exc}") from exc


def env_str(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """Return the variable ``name``, or ``default`` when unset or blank."""
    return _read(name, default, str, environ)


def env_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """Return the variable ``name`` as an int; a bad value raises naming the variable."""
    return _read(name, default, int, environ)


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """Return the variable ``name`` as a float; a bad value raises naming the variable."""
    return _read(name, default, float, environ)


def _env_api_key(environ: Mapping[str, str] | None = None) -> str:
    return env_str(ENV_PREFIX + "API_KEY", env_str("OPENAI_API_KEY", "", environ), environ)


def env_variable(field_name: str) -> str:
    """The environment variable of the ``Settings`` field ``field_name``."""
    return _OTHER_ENV_NAMES.get(field_name, ENV_PREFIX + field_name.upper())


def read_env_setting(field_name: str, environ: Mapping[str, str] | None = None) -> object:
    """The value of the ``Settings`` field ``field_name`` in the environment, or its default.

    A bad value raises ``EmbeddingConfigError`` naming the variable.
    """
    spec = next((f for f in fields(Settings) if f.name == field_name), None)
    if spec is None:
        raise AttributeError(f"Settings has no field {field_name!r}")
    name = env_variable(spec.name)
    default = spec.default
    if spec.name == "api_key":
        return _env_api_key(environ)
    if isinstance(default, bool) or not isinstance(default, (int, float, str)):
        raise AssertionError(f"unsupported setting type for {spec.name}")
    if isinstance(default, int):
        return env_int(name, default, environ)
    if isinstance(default, float):
        return env_float(name, default, environ)
    return env_str(name, default, environ)


@dataclass(frozen=True)
class Settings:
    """Everything the worker and producers can be configured with.

    Each field ``x`` is read from ``EMBEDDINGS_X``; units are in the names. ``api_key`` falls
    back to ``OPENAI_API_KEY`` and is hidden from ``repr``.
    """

    base_url: str = DEFAULT_BASE_URL
    api_key: str = field(default="", repr=False)
    model: str = DEFAULT_MODEL
    dimensions: int = 0  # 0: the model's native size
    encoding_format: str = DEFAULT_ENCODING_FORMAT
    batch_size: int = DEFAULT_BATCH_SIZE
    max_retries: int = DEFAULT_MAX_RETRIES
    initial_backoff_s: float = DEFAULT_INITIAL_BACKOFF_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S
    jitter_factor: float = DEFAULT_JITTER_FACTOR
    timeout_s: float = DEFAULT_TIMEOUT_S
    pool_size: int = DEFAULT_POOL_SIZE
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS  # per text, in the model's encoding
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS  # per API call, all its texts
    max_texts_per_call: int = DEFAULT_MAX_TEXTS_PER_CALL  # embed_texts / aembed_texts
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    flush_policy: str = DEFAULT_FLUSH_POLICY  # one of FLUSH_POLICIES
    task_max_retries: int = DEFAULT_TASK_MAX_RETRIES
    task_retry_backoff_s: float = DEFAULT_TASK_RETRY_BACKOFF_S
    task_retry_backoff_max_s: float = DEFAULT_TASK_RETRY_BACKOFF_MAX_S
    breaker_fail_max: int = DEFAULT_BREAKER_FAIL_MAX
    breaker_reset_timeout_s: float = DEFAULT_BREAKER_RESET_TIMEOUT_S
    metrics_port: int = 0  # 0: no metrics server
    metrics_addr: str = DEFAULT_METRICS_ADDR
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    result_expires_s: int = DEFAULT_RESULT_EXPIRES_S
    redis_socket_timeout_s: float = DEFAULT_REDIS_SOCKET_TIMEOUT_S
    result_backend_max_retries: int = DEFAULT_RESULT_BACKEND_MAX_RETRIES
    # The account's rate limit, one budget for every worker process (worker/budget).
    rpm_limit: int = DEFAULT_RPM_LIMIT  # requests per minute
    tpm_limit: int = DEFAULT_TPM_LIMIT  # tokens per minute
    model_limits: str = DEFAULT_MODEL_LIMITS  # per-model overrides of the two above
    shared_budget: int = DEFAULT_SHARED_BUDGET
    limiter_url: str = DEFAULT_LIMITER_URL
    limiter_max_wait_s: float = DEFAULT_LIMITER_MAX_WAIT_S
    limit_headroom: float = DEFAULT_LIMIT_HEADROOM
    bulk_floor_share: float = DEFAULT_BULK_FLOOR_SHARE  # of calls, while both lanes wait
    tokenizer: str = DEFAULT_TOKENIZER  # each model's token encoding (encoding_for)
    # The vector cache: never pay twice for one text.
    cache_url: str = DEFAULT_CACHE_URL
    cache_ttl_s: int = DEFAULT_CACHE_TTL_S
    cache_in_broker_db: int = DEFAULT_CACHE_IN_BROKER_DB
    # 1: task metadata shows the texts themselves (debugging); 0: their length and hash.
    show_texts: int = DEFAULT_SHOW_TEXTS
    # Broker, result store and Celery worker; each read from the variable env_variable names.
    # URLs may carry a password: kept out of repr, like the API key.
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    # Our own names, not CELERY_BROKER_URL/CELERY_RESULT_BACKEND: Celery reads those itself,
    # over its configuration (worker.celery_ext.config refuses them).
    broker_url: str = field(default="", repr=False)  # "": redis_url
    result_backend_url: str = field(default="", repr=False)  # "": redis_url
    # For sentinel:// URLs: the monitored master's name, the Sentinels' own password, and how
    # long a producer retries a publish through a failover (seconds).
    redis_sentinel_master: str = DEFAULT_REDIS_SENTINEL_MASTER
    redis_sentinel_password: str = field(default="", repr=False)
    redis_failover_timeout_s: float = DEFAULT_REDIS_FAILOVER_TIMEOUT_S
    unacked_restore_interval_s: int = DEFAULT_UNACKED_RESTORE_INTERVAL_S
    worker_pool: str = DEFAULT_WORKER_POOL
    worker_concurrency: int = 0  # 0: pool_size × batch_size + 2 × batch_size
    worker_prefetch_multiplier: int = DEFAULT_WORKER_PREFETCH_MULTIPLIER
    # `embed-file --batch-api`: limits per batch (at most OpenAI's), polling, resubmissions.
    batch_max_requests: int = DEFAULT_BATCH_MAX_REQUESTS
    batch_max_inputs: int = DEFAULT_BATCH_MAX_INPUTS
    batch_max_file_bytes: int = DEFAULT_BATCH_MAX_FILE_BYTES
    batch_poll_interval_s: float = DEFAULT_BATCH_POLL_INTERVAL_S
    batch_max_attempts: int = DEFAULT_BATCH_MAX_ATTEMPTS
    price_table: str = DEFAULT_PRICE_TABLE  # USD per 1M tokens: see prices_for

    def __post_init__(self) -> None:
        _check_celery_settings(self)
        _check_positive("batch_size", self.batch_size)
        _check_positive("pool_size", self.pool_size)
        _check_positive("max_text_chars", self.max_text_chars)
        _check_positive("max_texts_per_call", self.max_texts_per_call)
        _check_positive("timeout_s", self.timeout_s)
        _check_positive("pool_timeout_s", self.pool_timeout_s)
        _check_positive("redis_socket_timeout_s", self.redis_socket_timeout_s)
        _check_positive("redis_failover_timeout_s", self.redis_failover_timeout_s)
        if self.visibility_timeout_s <= 0:
            raise EmbeddingConfigError(
                f"BROKER_VISIBILITY_TIMEOUT must be positive, got {self.visibility_timeout_s!r}"
            )
        if self.batch_size > 2048:
            raise EmbeddingConfigError(
                "EMBEDDINGS_BATCH_SIZE must be at most 2048 (the API's limit)"
            )
        for name in (
            "dimensions",
            "max_retries",
            "task_max_retries",
            "initial_backoff_s",
            "max_backoff_s",
        ):
            if getattr(self, name) < 0:
                raise EmbeddingConfigError(f"{ENV_PREFIX}{name.upper()} must not be negative")
        if not 0 <= self.metrics_port <= 65535:
            raise EmbeddingConfigError("EMBEDDINGS_METRICS_PORT must be in [0, 65535]")
        if not 0.0 <= self.jitter_factor < 1.0:
            raise EmbeddingConfigError("EMBEDDINGS_JITTER_FACTOR must be in [0, 1)")
        if self.flush_policy not in FLUSH_POLICIES:
            raise EmbeddingConfigError(
                f"EMBEDDINGS_FLUSH_POLICY must be one of {', '.join(FLUSH_POLICIES)}, "
                f"got {self.flush_policy!r}"
            )
        if self.encoding_format not in ("float", "base64"):
            raise EmbeddingConfigError("EMBEDDINGS_ENCODING_FORMAT must be 'float' or 'base64'")
        for name in ("max_input_tokens", "max_request_tokens"):
            if getattr(self, name) < 0:
                raise EmbeddingConfigError(
                    f"{ENV_PREFIX}{name.upper()} must be 0 (no check) or a positive integer, "
                    f"got {getattr(self, name)!r}"
                )
        for name in ("rpm_limit", "tpm_limit"):
            if getattr(self, name) < 0:
                raise EmbeddingConfigError(
                    f"{ENV_PREFIX}{name.upper()} must be 0 (not configured) or a positive "
                    f"integer, got {getattr(self, name)!r}"
                )
        if self.shared_budget not in (0, 1):
            raise EmbeddingConfigError("EMBEDDINGS_SHARED_BUDGET must be 0 or 1")
        _check_positive("limiter_max_wait_s", self.limiter_max_wait_s)
        if not 0.0 <= self.limit_headroom < 0.5:
            raise EmbeddingConfigError("EMBEDDINGS_LIMIT_HEADROOM must be in [0, 0.5)")
        if not 0.0 <= self.bulk_floor_share <= 1.0:
            raise EmbeddingConfigError(
                f"EMBEDDINGS_BULK_FLOOR_SHARE must be in [0, 1], got {self.bulk_floor_share!r}"
            )
        self.limits_for(self.model)  # parses EMBEDDINGS_MODEL_LIMITS, naming it when bad
        self.encoding_for(self.model)  # parses EMBEDDINGS_TOKENIZER, naming it when bad
        _check_positive("cache_ttl_s", self.cache_ttl_s)
        if self.cache_in_broker_db not in (0, 1):
            raise EmbeddingConfigError("EMBEDDINGS_CACHE_IN_BROKER_DB must be 0 or 1")
        _check_cache_placement(self)
        if self.show_texts not in (0, 1):
            raise EmbeddingConfigError("EMBEDDINGS_SHOW_TEXTS must be 0 or 1")
        _check_batch_settings(self)
        if not self.base_url.startswith(("http://", "https://")):
            raise EmbeddingConfigError(
                f"EMBEDDINGS_BASE_URL must start with http:// or https://, got {self.base_url!r}"
            )

    def limits_for(self, model: str) -> tuple[int, int]:
        """``(rpm, tpm)`` of ``model``: its ``EMBEDDINGS_MODEL_LIMITS`` entry, else the defaults.

        0 means not configured: the budget then learns the limit from the API's headers.
        """
        return _parse_model_limits(self.model_limits).get(model, (self.rpm_limit, self.tpm_limit))

    def encoding_for(self, model: str) -> str:
        """The token encoding of ``model`` (one of ``worker.tokens.ENCODINGS``).

        Its ``EMBEDDINGS_TOKENIZER`` entry ``MODEL=ENCODING``; else the bare ``ENCODING`` entry
        if there is one (``cl100k_base`` for an Azure deployment's own names, ``estimate`` to
        count every model by the estimate); else OpenAI's table (``MODEL_ENCODINGS``), and
        ``estimate`` for any model not in it.
        """
        per_model, rest = _parse_tokenizer(self.tokenizer)
        found = per_model.get(model)
        if found is not None:
            return found
        if rest is not None:
            return rest
        return MODEL_ENCODINGS.get(model, ESTIMATE)

    def prices_for(self, model: str) -> tuple[float, float] | None:
        """``(online, batch)`` US dollars per million input tokens of ``model``, from
        ``EMBEDDINGS_PRICE_TABLE``; None when the table does not name the model."""
        return _parse_price_table(self.price_table).get(model)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment (see ``env_variable``) over the defaults above."""
        values = {spec.name: read_env_setting(spec.name, environ) for spec in fields(cls)}
        return cls(**values)  # type: ignore[arg-type]


def _model_pairs(
    raw: str, variable: str, expected: str, parse: Callable[[str, str], tuple[_T, _T]]
) -> Mapping[str, tuple[_T, _T]]:
    """``MODEL=A:B`` entries, comma-separated, each checked by ``parse`` (ValueError: bad)."""
    pairs: dict[str, tuple[_T, _T]] = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        model, sep, pair = entry.rpartition("=")
        first, colon, second = pair.partition(":")
        try:
            if not (sep and colon and model.strip()):
                raise ValueError(f"expected {expected}")
            pairs[model.strip()] = parse(first, second)
        except ValueError as exc:
            raise EmbeddingConfigError(
                f"{ENV_PREFIX}{variable} entry {entry!r} is invalid: {exc}"
            ) from exc
    return MappingProxyType(pairs)


def _rpm_tpm(rpm_text: str, tpm_text: str) -> tuple[int, int]:
    rpm, tpm = int(rpm_text), int(tpm_text)
    if rpm < 0 or tpm < 0:
        raise ValueError("limits must not be negative")
    return rpm, tpm


def _online_batch_prices(online_text: str, batch_text: str) -> tuple[float, float]:
    online, batch = float(online_text), float(batch_text)
    if not (math.isfinite(online) and math.isfinite(batch)) or min(online, batch) < 0:
        raise ValueError("prices must be finite and not negative")
    return online, batch


@functools.cache
def _parse_model_limits(raw: str) -> Mapping[str, tuple[int, int]]:
    # Cached: the budget asks for a model's limits before every API call.
    return _model_pairs(raw, "MODEL_LIMITS", "MODEL=RPM:TPM", _rpm_tpm)


@functools.cache
def _parse_tokenizer(raw: str) -> tuple[Mapping[str, str], str | None]:
    # Cached: the budget asks for a model's encoding before every API call.
    per_model: dict[str, str] = {}
    rest: str | None = None
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        model, sep, encoding = (part.strip() for part in entry.rpartition("="))
        try:
            if encoding not in ENCODINGS:
                raise ValueError(f"unknown encoding {encoding!r}: one of {', '.join(ENCODINGS)}")
            if sep and not model:
                raise ValueError("expected MODEL=ENCODING or ENCODING")
            if not sep and rest is not None:
                raise ValueError("a second bare ENCODING; name the model as MODEL=ENCODING")
        except ValueError as exc:
            raise EmbeddingConfigError(
                f"{ENV_PREFIX}TOKENIZER entry {entry!r} is invalid: {exc}"
            ) from exc
        if sep:
            per_model[model] = encoding
        else:
            rest = encoding
    return MappingProxyType(per_model), rest


@functools.cache
def _parse_price_table(raw: str) -> Mapping[str, tuple[float, float]]:
    return _model_pairs(
        raw, "PRICE_TABLE", "MODEL=ONLINE:BATCH (US dollars per 1M tokens)", _online_batch_prices
    )


def _check_batch_settings(settings: Settings) -> None:
    limits = {
        "batch_max_requests": (settings.batch_max_requests, BATCH_API_MAX_REQUESTS),
        "batch_max_inputs": (settings.batch_max_inputs, BATCH_API_MAX_INPUTS),
        "batch_max_file_bytes": (settings.batch_max_file_bytes, BATCH_API_MAX_FILE_BYTES),
    }
    for name, (value, api_limit) in limits.items():
        if not 1 <= value <= api_limit:
            raise EmbeddingConfigError(
                f"{env_variable(name)} must be between 1 and {api_limit} (the Batch API's "
                f"limit), got {value!r}"
            )
    _check_positive("batch_poll_interval_s", settings.batch_poll_interval_s)
    _check_positive("batch_max_attempts", settings.batch_max_attempts)
    _parse_price_table(settings.price_table)


def _check_celery_settings(settings: Settings) -> None:
    if settings.unacked_restore_interval_s <= 0:
        raise EmbeddingConfigError(
            "BROKER_UNACKED_RESTORE_INTERVAL must be positive, "
            f"got {settings.unacked_restore_interval_s!r}"
        )
    # Concurrency 0 is derived from the pool (see the field); prefetch 0 is Celery's no limit.
    for name in ("worker_concurrency", "worker_prefetch_multiplier"):
        if getattr(settings, name) < 0:
            raise EmbeddingConfigError(f"{env_variable(name)} must not be negative")
    urls = {"redis_url": settings.redis_url, "broker_url": settings.broker_url,
            "result_backend_url": settings.result_backend_url}  # fmt: skip
    for name, url in urls.items():
        if (url or name == "redis_url") and "://" not in url:
            # The URL itself is left out: it may carry a password.
            raise EmbeddingConfigError(f"{env_variable(name)} must be a URL (scheme://…)")


def _check_cache_placement(settings: Settings) -> None:
    # The broker's Redis runs noeviction (a full Redis must refuse tasks, not drop them) and
    # a cache must evict, so one database for both is opt-in.
    if not settings.cache_url or settings.cache_in_broker_db:
        return
    if _database(settings.cache_url) == _database(settings.broker_url or settings.redis_url):
        raise EmbeddingConfigError(
            "EMBEDDINGS_CACHE_URL names the broker's Redis database, which must not evict "
            "while a cache must: give the cache a Redis (or database) of its own with "
            "maxmemory-policy allkeys-lru, or set EMBEDDINGS_CACHE_IN_BROKER_DB=1"
        )


def _database(url: str) -> tuple[str | None, int, str]:
    parts = urlsplit(url)
    host = "localhost" if parts.hostname in ("127.0.0.1", "::1") else parts.hostname
    return host, parts.port or 6379, parts.path.strip("/") or "0"


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise EmbeddingConfigError(f"{ENV_PREFIX}{name.upper()} must be positive, got {value!r}")
