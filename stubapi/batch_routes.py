"""HTTP routes of the stub's Files and Batches endpoints, and their ``/_stub/batches`` controls.

``BatchRoutes.handle`` answers any path under ``/v1/files``, ``/v1/batches`` (or without the
``/v1``) and ``/_stub/batches``, and returns None for every other path, which the server
then routes as before. ``/v1`` paths need the stub's API key when it has one, as the
embeddings route does.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from stubapi.batches import BATCH_ENDPOINT, BatchConfig, BatchStore, Forced
from stubapi.faults import StubConfig
from stubapi.files import MAX_BATCH_FILE_BYTES, FileStore, MultipartError, parse_multipart

__all__ = ["BatchRoutes", "Reply"]

_JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = _JSON


def _error(status: int, message: str, code: str | None = None, param: str | None = None) -> Reply:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return Reply(status, json.dumps({"error": error}).encode())


def _ok(payload: Any) -> Reply:
    return Reply(200, json.dumps(payload).encode())


def _page(items: list[dict[str, Any]], query: dict[str, list[str]]) -> Reply:
    after = query.get("after", [None])[0]
    try:
        limit = max(1, min(100, int(query.get("limit", ["20"])[0])))
    except ValueError:
        return _error(400, "'limit' must be an integer.", param="limit")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return _ok(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


class BatchRoutes:
    """The Files and Batches API over one ``FileStore`` and one ``BatchStore``."""

    def __init__(
        self, embed_config: Callable[[], StubConfig], config: BatchConfig | None = None
    ) -> None:
        self._embed_config = embed_config
        self.files = FileStore()
        self.batches = BatchStore(self.files, embed_config, config)

    def reset(self) -> None:
        self.batches.reset()
        self.files.reset()

    def handle(self, method: str, path: str, query: str, headers: Any, body: bytes) -> Reply | None:
        """The reply to a request on ``path``, or None when the path is not one of these."""
        if path == "/_stub/batches":
            return self._control(method, body)
        parts = path.strip("/").split("/")
        if parts and parts[0] == "v1":
            parts = parts[1:]
        if not parts or parts[0] not in ("files", "batches"):
            return None
        key = self._embed_config().api_key
        if key is not None:
            supplied = str(headers.get("Authorization", "")).encode()
            if not hmac.compare_digest(supplied, f"Bearer {key}".encode()):
                return _error(401, "Incorrect API key provided", code="invalid_api_key")
        params = parse_qs(query)
        if parts[0] == "files":
            return self._files(method, parts[1:], params, headers, body)
        return self._batches(method, parts[1:], params, body)

    def _files(
        self,
        method: str,
        rest: list[str],
        query: dict[str, list[str]],
        headers: Any,
        body: bytes,
    ) -> Reply:
        files = self.files
        if not rest and method == "POST":
            return self._upload(str(headers.get("Content-Type", "")), body)
        if not rest and method == "GET":
            purpose = query.get("purpose", [None])[0]
            listed = [f.public() for f in files.all() if purpose in (None, f.purpose)]
            return _page(listed, query)
        stored = files.get(rest[0])
        if stored is None:
            return _error(404, f"No such File object: {rest[0]}", code="not_found")
        if len(rest) == 1 and method == "GET":
            return _ok(stored.public())
        if len(rest) == 1 and method == "DELETE":
            files.delete(stored.id)
            return _ok({"id": stored.id, "object": "file", "deleted": True})
        if rest[1:] == ["content"] and method == "GET":
            return Reply(200, stored.data, "application/octet-stream")
        return _error(405, f"Method {method} is not allowed here.")

    def _upload(self, content_type: str, body: bytes) -> Reply:
        try:
            form = parse_multipart(content_type, body)
        except MultipartError as exc:
            return _error(400, f"Invalid upload: {exc}")
        purpose = form.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if "file" not in form or not purpose:
            return _error(400, "An upload needs a 'file' and a 'purpose'.")
        filename, data = form["file"]
        if purpose == "batch" and len(data) > MAX_BATCH_FILE_BYTES:
            return _error(
                400,
                f"A batch input file may hold at most {MAX_BATCH_FILE_BYTES} bytes.",
                code="file_too_large",
            )
        return _ok(self.files.add(filename or "upload", purpose, data).public())

    def _batches(
        self, method: str, rest: list[str], query: dict[str, list[str]], body: bytes
    ) -> Reply:
        batches = self.batches
        if not rest and method == "POST":
            return self._create(body)
        if not rest and method == "GET":
            return _page([b.public() for b in batches.newest_first()], query)
        if len(rest) == 1 and method == "GET":
            batch = batches.get(rest[0])
        elif rest[1:] == ["cancel"] and method == "POST":
            batch = batches.cancel(rest[0])
        else:
            return _error(405, f"Method {method} is not allowed here.")
        if batch is None:
            return _error(404, f"No batch found with id '{rest[0]}'.", code="not_found")
        return _ok(batch.public())

    def _create(self, body: bytes) -> Reply:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(request, dict):
            return _error(400, "The request body must be a JSON object.")
        endpoint = request.get("endpoint")
        if endpoint != BATCH_ENDPOINT:
            # The real API takes other endpoints; this stub embeds and nothing else.
            return _error(400, f"The stub batches only {BATCH_ENDPOINT}.", param="endpoint")
        if request.get("completion_window") != "24h":
            return _error(400, "completion_window must be '24h'.", param="completion_window")
        file_id = request.get("input_file_id")
        stored = self.files.get(file_id) if isinstance(file_id, str) else None
        if stored is None:
            return _error(404, f"No such File object: {file_id}", code="not_found")
        if stored.purpose != "batch":
            return _error(400, "The input file must have purpose 'batch'.", param="input_file_id")
        metadata = request.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            return _error(400, "metadata must map strings to strings.", param="metadata")
        batch = self.batches.create(stored.id, endpoint, "24h", metadata)
        return _ok(batch.public())

    def _control(self, method: str, body: bytes) -> Reply:
        """``GET``: stats; ``POST {"delay_s", "max_inputs", …, "force": [{"outcome"}]}``."""
        if method == "GET":
            return _ok(self.batches.stats())
        if method != "POST":
            return _error(405, f"Method {method} is not allowed on /_stub/batches.")
        try:
            spec = json.loads(body or b"{}")
            if not isinstance(spec, dict):
                raise ValueError("body must be a JSON object")
            forced = [Forced(**f) for f in spec.pop("force", [])]
            self.batches.configure(spec)
        except (ValueError, TypeError) as exc:
            return _error(400, f"Invalid batch control request: {exc}")
        for one in forced:
            self.batches.force(one)
        return _ok(self.batches.stats())
