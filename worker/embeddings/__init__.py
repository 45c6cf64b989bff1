"""The in-process embedding client: batching, a keep-alive pool, backoff, typed errors."""

from worker.embeddings.batcher import (
    EmbeddingBatcher,
    EmbeddingResult,
    embed_text,
    embed_texts,
    reset_default_batcher,
)
from worker.embeddings.client import CallResult, EmbeddingClient
from worker.embeddings.config import EmbeddingConfig
from worker.errors import (
    EmbeddingAPIError,
    EmbeddingBudgetWaitError,
    EmbeddingCircuitOpenError,
    EmbeddingConfigError,
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingFatalError,
    EmbeddingInputError,
    EmbeddingInputTypeError,
    EmbeddingPoolExhausted,
    EmbeddingQueueFullError,
    EmbeddingQueueUnavailableError,
    EmbeddingRateLimitError,
    EmbeddingResponseError,
    EmbeddingResultStoreUnavailableError,
    EmbeddingResultTimeoutError,
    EmbeddingRetryableError,
    EmbeddingServerError,
    EmbeddingTimeoutError,
)
from worker.metrics import get_counter

__all__ = [
    "CallResult",
    "EmbeddingAPIError",
    "EmbeddingBatcher",
    "EmbeddingBudgetWaitError",
    "EmbeddingCircuitOpenError",
    "EmbeddingClient",
    "EmbeddingConfig",
    "EmbeddingConfigError",
    "EmbeddingConnectionError",
    "EmbeddingError",
    "EmbeddingFatalError",
    "EmbeddingInputError",
    "EmbeddingInputTypeError",
    "EmbeddingPoolExhausted",
    "EmbeddingQueueFullError",
    "EmbeddingQueueUnavailableError",
    "EmbeddingRateLimitError",
    "EmbeddingResponseError",
    "EmbeddingResult",
    "EmbeddingResultStoreUnavailableError",
    "EmbeddingResultTimeoutError",
    "EmbeddingRetryableError",
    "EmbeddingServerError",
    "EmbeddingTimeoutError",
    "embed_text",
    "embed_texts",
    "get_counter",
    "reset_default_batcher",
]
