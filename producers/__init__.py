"""What a web app imports: enqueue single texts and read their vectors back.

Texts are checked before anything is enqueued and sent by task name, so this package needs
neither the worker's HTTP code nor its task module::

    from producers import enqueue_text, embed_texts
    result = enqueue_text("What is machine learning?")   # an AsyncResult; keep result.id
    vectors = embed_texts(["a", "b"], timeout=60)       # in order, through the queue
"""

from producers.client import (
    EMBED_TEXT_TASK,
    embed_text,
    embed_texts,
    enqueue_text,
    enqueue_texts,
)
from worker.errors import (
    EmbeddingError,
    EmbeddingInputError,
    EmbeddingInputTypeError,
    EmbeddingPartialEnqueueError,
    EmbeddingQueueUnavailableError,
)

__all__ = [
    "EMBED_TEXT_TASK",
    "EmbeddingError",
    "EmbeddingInputError",
    "EmbeddingInputTypeError",
    "EmbeddingPartialEnqueueError",
    "EmbeddingQueueUnavailableError",
    "embed_text",
    "embed_texts",
    "enqueue_text",
    "enqueue_texts",
]
