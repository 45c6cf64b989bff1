"""The Files and Batches endpoints over httpx, with the project's errors and retries.

httpx rather than the ``openai`` package: httpx is already a dependency of the wheel (openai
would add itself, jiter, distro and tqdm to every web app that installs the producers), the
five endpoints are a page of code, the output file is streamed line by line instead of read
whole, errors land in the project's one tree, and, above all, a create is never retried
blindly. openai-python retries a POST whose answer was lost, which can create a batch twice
and pay twice; here a create that fails transiently first looks for the batch it may have
made (``find_by_input_file``), and only then tries again.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

from worker.embeddings.backoff import build_retrying
from worker.embeddings.ratelimit_headers import parse_retry_after
from worker.errors import (
    EmbeddingAPIError,
    EmbeddingConnectionError,
    EmbeddingError,
    EmbeddingRateLimitError,
    EmbeddingResponseError,
    EmbeddingRetryableError,
    EmbeddingServerError,
    EmbeddingTimeoutError,
)

__all__ = ["BatchClient", "Sleep"]

Sleep = Callable[[float], None]
_T = TypeVar("_T")
_RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_API_MESSAGE_CHARS = 300
ENDPOINT = "/v1/embeddings"
COMPLETION_WINDOW = "24h"


def _api_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        message = str(error.get("message") or "")
    except (ValueError, AttributeError):
        message = response.text
    return message[:_MAX_API_MESSAGE_CHARS]


class BatchClient:
    """One API base and key; ``transport``, ``sleep`` and ``random`` for tests.

    Every call but a create is retried on 408, 409, 429, 5xx, timeouts and connection errors
    (``max_retries`` times, 1 s, 2 s, 4 s … ±20%, honouring ``Retry-After``); the error then
    raised is an ``EmbeddingRetryableError``. Any other 4xx is an ``EmbeddingAPIError`` with
    the status and the API's message.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 32.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep = time.sleep,
        random_source: Callable[[], float] = random.random,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            transport=transport,
        )
        self._retrying = build_retrying(
            max_retries=max_retries,
            initial_s=initial_backoff_s,
            max_s=max_backoff_s,
            jitter_factor=0.2,
            sleep=sleep,
            random=random_source,
        )
        self._sleep = sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def check_access(self) -> None:
        """One cheap authenticated call (list one batch): a bad key or URL fails here."""
        self._json("GET", "batches", params={"limit": 1})

    def upload(self, filename: str, data: bytes) -> str:
        """Upload a batch input file; its id."""
        files = {"file": (filename, data, "application/jsonl")}
        uploaded = self._json("POST", "files", files=files, data={"purpose": "batch"})
        return str(uploaded["id"])

    def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Create the batch of ``input_file_id``, or find the one an earlier try created."""
        body = {
            "input_file_id": input_file_id,
            "endpoint": ENDPOINT,
            "completion_window": COMPLETION_WINDOW,
            "metadata": metadata,
        }
        attempts = 0
        while True:
            try:
                return self._once("POST", "batches", json=body).json()  # type: ignore[no-any-return]
            except EmbeddingRetryableError:
                attempts += 1
                # The request may have reached the API before the answer was lost.
                found = self.find_by_input_file(input_file_id)
                if found is not None:
                    return found
                if attempts > 3:
                    raise
                self._sleep(min(2.0**attempts, 30.0))

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._json("GET", f"batches/{batch_id}")

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._json("POST", f"batches/{batch_id}/cancel")

    def find_by_input_file(self, input_file_id: str) -> dict[str, Any] | None:
        """The batch created for ``input_file_id``, searched newest first, or None."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            page = self._json("GET", "batches", params=params)
            for batch in page.get("data") or []:
                if batch.get("input_file_id") == input_file_id:
                    return batch  # type: ignore[no-any-return]
            if not page.get("has_more") or not page.get("last_id"):
                return None
            after = str(page["last_id"])

    def lines(self, file_id: str) -> Iterator[bytes]:
        """The lines of a file (an output or error file), downloaded to a temporary file
        first, so memory stays flat and a retry starts the download again from the top."""
        with tempfile.TemporaryFile() as spool:

            def download() -> None:
                spool.seek(0)
                spool.truncate()
                with self._http.stream("GET", f"files/{file_id}/content") as response:
                    if response.status_code != 200:
                        response.read()
                        raise self._status_error(response)
                    for chunk in response.iter_bytes():
                        spool.write(chunk)

            self._retrying(self._transport_errors, download)
            spool.seek(0)
            yield from (line for line in spool if line.strip())

    def delete_file(self, file_id: str) -> None:
        self._json("DELETE", f"files/{file_id}")

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._retrying(self._once, method, path, **kwargs)
        try:
            payload = response.json()
        except ValueError as exc:
            raise EmbeddingResponseError(f"{method} {path}: the API answered no JSON") from exc
        if not isinstance(payload, dict):
            raise EmbeddingResponseError(f"{method} {path}: the API answered {payload!r:.80}")
        return payload

    def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._transport_errors(self._http.request, method, path, **kwargs)
        if response.status_code >= 400:
            raise self._status_error(response)
        return response

    @staticmethod
    def _transport_errors(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        try:
            return call(*args, **kwargs)
        except httpx.TimeoutException as exc:
            raise EmbeddingTimeoutError(f"the Batch API did not answer in time: {exc}") from exc
        except httpx.TransportError as exc:
            raise EmbeddingConnectionError(f"the Batch API could not be reached: {exc}") from exc

    @staticmethod
    def _status_error(response: httpx.Response) -> EmbeddingError:
        status = response.status_code
        api_message = _api_message(response)
        where = f"{response.request.method} {response.request.url.path}"
        message = f"{where}: the API answered {status} {response.reason_phrase}: {api_message}"
        if status not in _RETRYABLE:
            return EmbeddingAPIError(message, status, api_message)
        error: EmbeddingRetryableError
        if status == 429:
            error = EmbeddingRateLimitError(message, status, api_message)
        elif status == 408:
            error = EmbeddingTimeoutError(message, status, api_message)
        else:
            error = EmbeddingServerError(message, status, api_message)
        error.retry_after_s = parse_retry_after(response.headers)
        return error
