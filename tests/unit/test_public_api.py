"""The public surface of worker.embeddings, producers and gateway, and the error tree."""

from __future__ import annotations

import inspect
import pickle
import types

import pytest

import gateway
import producers
import worker.embeddings
import worker.errors
from worker.errors import EmbeddingError

ERRORS = [getattr(worker.errors, name) for name in worker.errors.__all__]


def test_all_is_sorted() -> None:
    assert worker.embeddings.__all__ == sorted(worker.embeddings.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(set(worker.embeddings.__all__)) == len(worker.embeddings.__all__)


def test_all_lists_every_public_name_of_the_package() -> None:
    public = {
        name
        for name, value in vars(worker.embeddings).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(worker.embeddings.__all__)


def test_every_name_in_all_exists() -> None:
    for name in worker.embeddings.__all__:
        assert hasattr(worker.embeddings, name), name


def test_the_package_exports_every_error_of_the_tree() -> None:
    assert set(worker.errors.__all__) <= set(worker.embeddings.__all__)


def test_errors_module_lists_every_error_class_it_defines() -> None:
    defined = {
        name
        for name, value in vars(worker.errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    assert defined == set(worker.errors.__all__)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_subclasses_embedding_error(error: type[Exception]) -> None:
    assert issubclass(error, EmbeddingError)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (worker.errors.EmbeddingInputError, ValueError),
        (worker.errors.EmbeddingInputTypeError, TypeError),
        (worker.errors.EmbeddingInputTypeError, ValueError),
        (worker.errors.EmbeddingConfigError, ValueError),
    ],
)
def test_input_errors_are_catchable_as_builtin_errors(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, builtin)


@pytest.mark.parametrize(
    "error",
    [
        worker.errors.EmbeddingRateLimitError,
        worker.errors.EmbeddingServerError,
        worker.errors.EmbeddingTimeoutError,
        worker.errors.EmbeddingConnectionError,
        worker.errors.EmbeddingPoolExhausted,
        worker.errors.EmbeddingCircuitOpenError,
    ],
)
def test_transient_errors_are_retryable(error: type[Exception]) -> None:
    assert issubclass(error, worker.errors.EmbeddingRetryableError)
    assert not issubclass(error, worker.errors.EmbeddingFatalError)


@pytest.mark.parametrize(
    "error", [worker.errors.EmbeddingAPIError, worker.errors.EmbeddingResponseError]
)
def test_rejections_are_fatal(error: type[Exception]) -> None:
    assert issubclass(error, worker.errors.EmbeddingFatalError)
    assert not issubclass(error, worker.errors.EmbeddingRetryableError)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_round_trips_through_its_args(error: type[EmbeddingError]) -> None:
    original = error("the API answered 429: slow down", 429, "slow down")
    rebuilt = type(original)(*original.args)
    assert type(rebuilt) is error
    assert str(rebuilt) == str(original) == "the API answered 429: slow down"
    assert rebuilt.status_code == 429
    assert rebuilt.api_message == "slow down"


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_round_trips_with_only_a_message(error: type[EmbeddingError]) -> None:
    rebuilt = error(*error("no status").args)
    assert str(rebuilt) == "no status"
    assert rebuilt.status_code is None
    assert rebuilt.api_message is None


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_survives_pickling(error: type[EmbeddingError]) -> None:
    # Our own bytes, just made: nothing untrusted is unpickled.
    rebuilt = pickle.loads(pickle.dumps(error("bad gateway", 502, "upstream")))  # noqa: S301
    assert type(rebuilt) is error
    assert (str(rebuilt), rebuilt.status_code, rebuilt.api_message) == (
        "bad gateway",
        502,
        "upstream",
    )


# The same checks for what web apps import: ``producers`` (sync and async) and ``gateway``.
PACKAGES = [producers, gateway]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_package_all_is_sorted_unique_and_complete(package: types.ModuleType) -> None:
    names = package.__all__
    # ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical.
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert len(set(names)) == len(names)
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(names)


def test_producers_export_the_sync_and_async_functions_side_by_side() -> None:
    for name in ("embed_text", "embed_texts", "enqueue_text", "enqueue_texts"):
        assert name in producers.__all__
        assert "a" + name in producers.__all__
        assert inspect.iscoroutinefunction(getattr(producers, "a" + name))


def test_the_result_timeout_error_is_retryable_and_a_builtin_timeout() -> None:
    error = worker.errors.EmbeddingResultTimeoutError
    assert issubclass(error, worker.errors.EmbeddingRetryableError)
    assert issubclass(error, TimeoutError)
    assert "EmbeddingResultTimeoutError" in (worker.errors.__doc__ or "")


def test_a_full_redis_error_is_a_queue_error_exported_where_web_apps_look() -> None:
    error = worker.errors.EmbeddingQueueFullError
    assert issubclass(error, worker.errors.EmbeddingQueueUnavailableError)
    assert producers.EmbeddingQueueFullError is error
    assert worker.embeddings.EmbeddingQueueFullError is error
    assert "EmbeddingQueueFullError" in (worker.errors.__doc__ or "")


def test_revoke_is_exported_next_to_the_enqueue_functions() -> None:
    assert producers.revoke is producers.client.revoke
    assert "revoke" in producers.__all__
