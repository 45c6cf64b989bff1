"""The project's one exception tree.

Every error raised by this project derives from :class:`EmbeddingError`::

    EmbeddingError
    ├── EmbeddingConfigError (ValueError)        a setting or environment variable is invalid
    ├── EmbeddingInputError (ValueError)         a text is unusable; raised before any call
    │   └── EmbeddingInputTypeError (TypeError)  a text is not a ``str``
    ├── EmbeddingRetryableError                  transient; worth trying again later
    │   ├── EmbeddingRateLimitError              429 after all in-process retries
    │   ├── EmbeddingServerError                 5xx after all in-process retries
    │   ├── EmbeddingTimeoutError                the API did not answer in time
    │   ├── EmbeddingConnectionError             the API could not be reached
    │   ├── EmbeddingPoolExhausted               no pooled connection freed up in time
    │   ├── EmbeddingQueueUnavailableError       the broker could not be reached to enqueue
    │   │   ├── EmbeddingPartialEnqueueError     … midway through a list; says which were
    │   │   └── EmbeddingQueueFullError          Redis is full (maxmemory) and refused the text
    │   │       └── EmbeddingPartialQueueFullError  … midway through a list (also a Partial…)
    │   ├── EmbeddingResultStoreUnavailableError Redis failed under a running or awaited text
    │   ├── EmbeddingResultTimeoutError (TimeoutError)  no result within a producer's timeout;
    │   │                                        carries the task ids
    │   ├── EmbeddingCircuitOpenError            the per-process breaker is refusing calls
    │   └── EmbeddingBudgetWaitError             the shared rate-limit budget kept the call waiting
    └── EmbeddingFatalError                      trying again will not help
        ├── EmbeddingAPIError                    the API rejected the call (a 4xx other than 429)
        └── EmbeddingResponseError               the API answered with something unusable

Errors carry ``status_code`` and ``api_message`` where the API gave them. Every constructor
argument lives in ``args`` so that Celery's JSON result backend can store an error and
rebuild it in another process as the same type.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.embeddings.ratelimit_headers import RateLimitHeaders

__all__ = [
    "EmbeddingAPIError",
    "EmbeddingBudgetWaitError",
    "EmbeddingCircuitOpenError",
    "EmbeddingConfigError",
    "EmbeddingConnectionError",
    "EmbeddingError",
    "EmbeddingFatalError",
    "EmbeddingInputError",
    "EmbeddingInputTypeError",
    "EmbeddingPartialEnqueueError",
    "EmbeddingPartialQueueFullError",
    "EmbeddingPoolExhausted",
    "EmbeddingQueueFullError",
    "EmbeddingQueueUnavailableError",
    "EmbeddingRateLimitError",
    "EmbeddingResponseError",
    "EmbeddingResultStoreUnavailableError",
    "EmbeddingResultTimeoutError",
    "EmbeddingRetryableError",
    "EmbeddingServerError",
    "EmbeddingTimeoutError",
]
# ``__all__`` lists the error classes only (tests/unit/test_public_api.py); ``causes`` is
# the one helper beside them, for every reader of a cause chain.


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, then each error it was raised from (``__cause__``) or during (``__context__``).

    Each error once: a chain Python lets one build can loop back on itself.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


class EmbeddingError(Exception):
    """Root of every error this project raises."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        api_message: str | None = None,
    ) -> None:
        # Positional args only: Celery rebuilds a stored exception as ``cls(*args)``.
        super().__init__(message, status_code, api_message)
        self.message = message
        self.status_code = status_code
        self.api_message = api_message

    def __str__(self) -> str:
        return self.message


class EmbeddingConfigError(EmbeddingError, ValueError):
    """A setting or environment variable has an invalid value; the message names it."""


class EmbeddingInputError(EmbeddingError, ValueError):
    """A text cannot be embedded (empty, too long, not encodable); nothing was sent."""


class EmbeddingInputTypeError(EmbeddingInputError, TypeError):
    """A text is not a ``str``."""


class EmbeddingRetryableError(EmbeddingError):
    """A transient failure: the same request may succeed later.

    ``retry_after_s`` holds the server's own hint (``Retry-After``), and ``should_retry`` is
    False when the server vetoed a retry (``x-should-retry: false``). Neither is stored by
    Celery: they steer the in-process retries only. ``rate_limits`` holds the API's
    ``x-ratelimit-*`` headers of the failed response, for the shared budget.
    """

    retry_after_s: float | None = None
    should_retry: bool = True
    rate_limits: RateLimitHeaders | None = None


class EmbeddingRateLimitError(EmbeddingRetryableError):
    """The API kept answering 429 through every in-process retry."""


class EmbeddingServerError(EmbeddingRetryableError):
    """The API kept answering 5xx through every in-process retry."""


class EmbeddingTimeoutError(EmbeddingRetryableError):
    """The API did not answer within the per-call timeout."""


class EmbeddingConnectionError(EmbeddingRetryableError):
    """The API could not be reached (refused, reset, DNS)."""


class EmbeddingPoolExhausted(EmbeddingRetryableError):
    """No connection of this process's pool freed up within the pool wait timeout."""


class EmbeddingCircuitOpenError(EmbeddingRetryableError):
    """This process's circuit breaker is open after repeated failures; no call was made."""


class EmbeddingBudgetWaitError(EmbeddingRetryableError):
    """The cluster's shared rate-limit budget could not admit the call in time; none was made.

    Raised when the budget asks for a wait longer than ``EMBEDDINGS_LIMITER_MAX_WAIT_S``, when
    the API kept answering 429, or when the budget's Redis stayed unreachable. The task becomes
    a Celery retry no sooner than ``retry_after_s``.
    """


class EmbeddingFatalError(EmbeddingError):
    """A failure that retrying the same request cannot fix."""


class EmbeddingAPIError(EmbeddingFatalError):
    """The API rejected the request with a non-retryable status (400, 401, 403, 404, 422...)."""


class EmbeddingResponseError(EmbeddingFatalError):
    """The API's answer did not match the request: bad JSON, wrong count, missing indexes."""


class EmbeddingQueueUnavailableError(EmbeddingRetryableError):
    """The broker (Redis) could not be reached to enqueue a text; nothing was enqueued."""


class EmbeddingQueueFullError(EmbeddingQueueUnavailableError):
    """Redis is at its ``maxmemory`` and refused the text; nothing was enqueued.

    Not an outage: Redis answers, and takes texts again once workers have drained the
    queue or it is given more memory (docs/operations.md, sizing).
    """


class EmbeddingResultStoreUnavailableError(EmbeddingRetryableError):
    """Redis failed while a worker was finishing a text, or while a producer awaited one.

    In a worker (see ``worker.celery_ext.outages``) the text goes back to the queue; it is
    never stored as a text's outcome. In ``producers.aio`` it means the result subscription
    could not be made: the text may still be embedded, and its result can be read later by
    its id.
    """


class EmbeddingResultTimeoutError(EmbeddingRetryableError, TimeoutError):
    """No result arrived within a producer's ``timeout``; the texts may still finish.

    Also a builtin ``TimeoutError``, so ``except TimeoutError`` around asyncio code catches
    it. ``task_ids`` are the call's texts' task ids, in input order: wait for them again
    (``wait_all``), or revoke them (``producers.revoke``) so that no worker pays for the
    unfinished ones. Only raised in producers, never stored by Celery (``task_ids`` is not
    in ``args``: a rebuilt copy has none). The synchronous producers raise its subclass
    ``producers.client.EmbeddingWaitTimeoutError``, which is Celery's ``TimeoutError`` too.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        api_message: str | None = None,
        *,
        task_ids: Sequence[str] = (),
    ) -> None:
        super().__init__(message, status_code, api_message)
        self.task_ids: list[str] = list(task_ids)
        # OSError keeps only two of three constructor arguments in ``args`` and reads them as
        # (errno, strerror, filename); restore the tree's contract: ``cls(*args)`` rebuilds.
        self.args = (message, status_code, api_message)
        self.errno, self.strerror, self.filename = None, message, None


class EmbeddingPartialEnqueueError(EmbeddingQueueUnavailableError):
    """The broker failed midway through a list of texts; the error says which were enqueued.

    The texts before index ``not_enqueued_from`` were enqueued (``enqueued`` holds their
    ``AsyncResult``\\s, in order); none from that index on were. Producer-side only:
    ``enqueued`` is not kept in ``args`` (it is not JSON), so a rebuilt copy has none.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        api_message: str | None = None,
        *,
        enqueued: Sequence[Any] = (),
        not_enqueued_from: int = 0,
    ) -> None:
        super().__init__(message, status_code, api_message)
        self.enqueued: list[Any] = list(enqueued)
        self.not_enqueued_from = not_enqueued_from


class EmbeddingPartialQueueFullError(EmbeddingPartialEnqueueError, EmbeddingQueueFullError):
    """Redis filled up (``maxmemory``) while a list was enqueued, perhaps at its first text.

    Both promises at once: ``except EmbeddingQueueFullError`` catches it as it catches a
    single refused text, and, as an ``EmbeddingPartialEnqueueError``, ``enqueued`` and
    ``not_enqueued_from`` say which texts were enqueued (none, when Redis was full already).
    """
