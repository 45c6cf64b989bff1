"""What a web app imports: enqueue single texts and read their vectors back.

Texts are checked before anything is enqueued and sent by task name, so this package needs
neither the worker's HTTP code nor its task module::

    from producers import enqueue_text, embed_texts
    result = enqueue_text("What is machine learning?")   # an AsyncResult; keep result.id
    vectors = embed_texts(["a", "b"], timeout=60)       # in order, through the queue
    revoke([result.id])                                 # never embedded, state REVOKED
    enqueue_texts(backfill, lane="bulk")                # served after interactive texts

From asyncio code (FastAPI, aiohttp…), the same with ``await`` and no thread per waiting text::

    from producers import aembed_text, aembed_texts
    vector = await aembed_text("What is machine learning?", timeout=30)
"""

from producers.aio import (
    AsyncEmbeddingResult,
    AsyncProducer,
    aembed_text,
    aembed_texts,
    aenqueue_text,
    aenqueue_texts,
)
from producers.client import (
    EMBED_TEXT_TASK,
    embed_text,
    embed_texts,
    enqueue_text,
    enqueue_texts,
    revoke,
)
from producers.lanes import LANE_BULK, LANE_INTERACTIVE, LANES
from worker.errors import (
    EmbeddingError,
    EmbeddingInputError,
    EmbeddingInputTypeError,
    EmbeddingPartialEnqueueError,
    EmbeddingPartialQueueFullError,
    EmbeddingQueueFullError,
    EmbeddingQueueUnavailableError,
    EmbeddingResultStoreUnavailableError,
    EmbeddingResultTimeoutError,
)

__all__ = [
    "EMBED_TEXT_TASK",
    "LANES",
    "LANE_BULK",
    "LANE_INTERACTIVE",
    "AsyncEmbeddingResult",
    "AsyncProducer",
    "EmbeddingError",
    "EmbeddingInputError",
    "EmbeddingInputTypeError",
    "EmbeddingPartialEnqueueError",
    "EmbeddingPartialQueueFullError",
    "EmbeddingQueueFullError",
    "EmbeddingQueueUnavailableError",
    "EmbeddingResultStoreUnavailableError",
    "EmbeddingResultTimeoutError",
    "aembed_text",
    "aembed_texts",
    "aenqueue_text",
    "aenqueue_texts",
    "embed_text",
    "embed_texts",
    "enqueue_text",
    "enqueue_texts",
    "revoke",
]
