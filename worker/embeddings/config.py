"""``EmbeddingConfig``: the in-process client's settings, with the seed's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker import settings as s
from worker.errors import EmbeddingConfigError

__all__ = ["EmbeddingConfig"]


def _base_url_from_env() -> str:
    return s.env_str(s.ENV_PREFIX + "BASE_URL", s.DEFAULT_BASE_URL)


def _api_key_from_env() -> str:
    return s.env_str(s.ENV_PREFIX + "API_KEY", s.env_str("OPENAI_API_KEY", ""))


def _model_from_env() -> str:
    return s.env_str(s.ENV_PREFIX + "MODEL", s.DEFAULT_MODEL)


@dataclass(frozen=True)
class EmbeddingConfig:
    """Settings of one ``EmbeddingBatcher``. Times are in seconds.

    ``batch_size`` (8) caps texts per API call; ``max_retries`` (3) retries follow a first
    attempt, waiting ``initial_backoff`` (1.0) · 2^(n-1) ± ``jitter_factor`` (0.2), capped at
    ``max_backoff`` (32.0). ``timeout`` (30.0) bounds one call; ``pool_size`` (3) bounds
    concurrent calls per process and ``pool_timeout`` (60.0) how long a call waits for one.
    ``base_url``, ``api_key`` and ``model`` default from ``EMBEDDINGS_BASE_URL``,
    ``EMBEDDINGS_API_KEY`` (or ``OPENAI_API_KEY``) and ``EMBEDDINGS_MODEL``.
    """

    model: str = field(default_factory=_model_from_env)
    batch_size: int = s.DEFAULT_BATCH_SIZE
    max_retries: int = s.DEFAULT_MAX_RETRIES
    initial_backoff: float = s.DEFAULT_INITIAL_BACKOFF_S
    max_backoff: float = s.DEFAULT_MAX_BACKOFF_S
    jitter_factor: float = s.DEFAULT_JITTER_FACTOR
    timeout: float = s.DEFAULT_TIMEOUT_S
    base_url: str = field(default_factory=_base_url_from_env)
    api_key: str = field(default_factory=_api_key_from_env, repr=False)
    pool_size: int = s.DEFAULT_POOL_SIZE
    pool_timeout: float = s.DEFAULT_POOL_TIMEOUT_S
    max_text_chars: int = s.DEFAULT_MAX_TEXT_CHARS
    dimensions: int = 0  # 0: the model's native size; text-embedding-3 models accept fewer
    encoding_format: str = s.DEFAULT_ENCODING_FORMAT

    def __post_init__(self) -> None:
        # Reuse the settings checks so both entry points refuse the same bad values.
        try:
            self.to_settings()
        except EmbeddingConfigError as exc:
            raise EmbeddingConfigError(f"invalid EmbeddingConfig: {exc}") from exc
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise EmbeddingConfigError("invalid EmbeddingConfig: backoffs must not be negative")

    def to_settings(self) -> s.Settings:
        """The equivalent ``Settings`` (used for validation)."""
        return s.Settings(
            base_url=self.base_url,
            api_key=self.api_key,
            model=self.model,
            dimensions=self.dimensions,
            encoding_format=self.encoding_format,
            batch_size=self.batch_size,
            max_retries=self.max_retries,
            initial_backoff_s=self.initial_backoff,
            max_backoff_s=self.max_backoff,
            jitter_factor=self.jitter_factor,
            timeout_s=self.timeout,
            pool_size=self.pool_size,
            pool_timeout_s=self.pool_timeout,
            max_text_chars=self.max_text_chars,
        )

    @classmethod
    def from_settings(cls, settings: s.Settings) -> EmbeddingConfig:
        """The client part of the service-wide ``Settings``."""
        return cls(
            model=settings.model,
            batch_size=settings.batch_size,
            max_retries=settings.max_retries,
            initial_backoff=settings.initial_backoff_s,
            max_backoff=settings.max_backoff_s,
            jitter_factor=settings.jitter_factor,
            timeout=settings.timeout_s,
            base_url=settings.base_url,
            api_key=settings.api_key,
            pool_size=settings.pool_size,
            pool_timeout=settings.pool_timeout_s,
            max_text_chars=settings.max_text_chars,
            dimensions=settings.dimensions,
            encoding_format=settings.encoding_format,
        )
