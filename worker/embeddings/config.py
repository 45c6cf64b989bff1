"""``EmbeddingConfig``: the in-process client's settings, with the seed's defaults.

It is the client's part of ``worker.settings.Settings`` under the seed's field names: each
field is the ``Settings`` field of the same name, or of that name plus ``_s`` where the seed
left the unit out (``timeout`` is ``timeout_s``; ``settings_field`` says which). Its defaults
are the ``Settings`` defaults; ``base_url``, ``api_key`` and ``model`` default to what
``Settings`` reads from the environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from worker import settings as s
from worker.errors import EmbeddingConfigError

__all__ = ["EmbeddingConfig", "settings_field"]

_DEFAULTS = s.Settings()
_SETTINGS_NAMES = frozenset(f.name for f in dataclasses.fields(s.Settings))


def settings_field(name: str) -> str:
    """The ``Settings`` field an ``EmbeddingConfig`` field is: its name, or with ``_s``."""
    if name in _SETTINGS_NAMES:
        return name
    if f"{name}_s" in _SETTINGS_NAMES:
        return f"{name}_s"
    raise AttributeError(f"Settings has no field {name!r} or {name + '_s'!r}")


def _from_environment(settings_field: str) -> Callable[[], str]:
    def read() -> str:
        return str(s.read_env_setting(settings_field))

    return read


@dataclass(frozen=True)
class EmbeddingConfig:
    """Settings of one ``EmbeddingBatcher``. Times are in seconds.

    ``batch_size`` (8) caps texts per API call; ``max_retries`` (3) retries follow a first
    attempt, waiting ``initial_backoff`` (1.0) · 2^(n-1) ± ``jitter_factor`` (0.2), capped at
    ``max_backoff`` (32.0). ``timeout`` (30.0) bounds one call; ``pool_size`` (3) bounds
    concurrent calls per process and ``pool_timeout`` (60.0) how long a call waits for one.
    ``base_url``, ``api_key`` and ``model`` default from ``EMBEDDINGS_BASE_URL``,
    ``EMBEDDINGS_API_KEY`` (or ``OPENAI_API_KEY``) and ``EMBEDDINGS_MODEL``, read through
    ``Settings``.
    """

    model: str = field(default_factory=_from_environment("model"))
    batch_size: int = _DEFAULTS.batch_size
    max_retries: int = _DEFAULTS.max_retries
    initial_backoff: float = _DEFAULTS.initial_backoff_s
    max_backoff: float = _DEFAULTS.max_backoff_s
    jitter_factor: float = _DEFAULTS.jitter_factor
    timeout: float = _DEFAULTS.timeout_s
    base_url: str = field(default_factory=_from_environment("base_url"))
    api_key: str = field(default_factory=_from_environment("api_key"), repr=False)
    pool_size: int = _DEFAULTS.pool_size
    pool_timeout: float = _DEFAULTS.pool_timeout_s
    max_text_chars: int = _DEFAULTS.max_text_chars
    dimensions: int = _DEFAULTS.dimensions  # 0: the model's native size
    encoding_format: str = _DEFAULTS.encoding_format

    def __post_init__(self) -> None:
        # Reuse the settings checks so both entry points refuse the same bad values.
        try:
            self.to_settings()
        except EmbeddingConfigError as exc:
            raise EmbeddingConfigError(f"invalid EmbeddingConfig: {exc}") from exc
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise EmbeddingConfigError("invalid EmbeddingConfig: backoffs must not be negative")

    def to_settings(self) -> s.Settings:
        """The equivalent ``Settings``; settings the client does not use keep their defaults."""
        values = {settings_field(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(_DEFAULTS, **values)

    @classmethod
    def from_settings(cls, settings: s.Settings) -> EmbeddingConfig:
        """The client part of the service-wide ``Settings``."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: getattr(settings, settings_field(name)) for name in names})
