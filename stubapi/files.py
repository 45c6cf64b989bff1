"""The stub's ``/v1/files``: uploads (multipart, ``purpose=batch``), retrieval, content, delete.

Files live in memory, as OpenAI's would on its side, until deleted or the stub is reset.
Uploads over ``max_bytes`` (200 MB, OpenAI's limit for a batch input file) are refused with
400, as the real API refuses them.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FILE_EXPIRY_S",
    "MAX_BATCH_FILE_BYTES",
    "FileStore",
    "MultipartError",
    "StoredFile",
    "parse_multipart",
]

MAX_BATCH_FILE_BYTES = 200_000_000
# OpenAI keeps batch files 30 days unless an expiry is set; reported, not enforced.
FILE_EXPIRY_S = 30 * 86_400
_PARAM = re.compile(r';\s*([\w-]+)="([^"]*)"')


class MultipartError(ValueError):
    """A body that is not the multipart/form-data an upload needs."""


@dataclass(frozen=True)
class StoredFile:
    """One file: its bytes and what ``GET /v1/files/{id}`` says about it."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": self.created_at + FILE_EXPIRY_S,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The form's fields, by name: ``(filename or None, bytes)``; ``MultipartError`` if bad."""
    media, _, params = content_type.partition(";")
    match = re.search(r'boundary="?([^";]+)"?', params)
    if media.strip().lower() != "multipart/form-data" or match is None:
        raise MultipartError("expected a multipart/form-data body with a boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError("a part has no blank line after its headers")
        disposition = ""
        for raw in head.decode("latin-1").split("\r\n"):
            name, _, value = raw.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value
        params_found = dict(_PARAM.findall(disposition))
        if "name" not in params_found:
            raise MultipartError("a part has no Content-Disposition name")
        # Each part's payload ends with the CRLF that precedes the next delimiter.
        payload = payload.removesuffix(b"\r\n")
        fields[params_found["name"]] = (params_found.get("filename"), payload)
    return fields


class FileStore:
    """Thread-safe files by id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        self.uploads = 0

    def add(self, filename: str, purpose: str, data: bytes, *, uploaded: bool = True) -> StoredFile:
        """Store ``data``; ``uploaded`` counts it as a client's upload (not a batch's output)."""
        stored = StoredFile(
            f"file-{uuid.uuid4().hex[:24]}", filename, purpose, data, int(time.time())
        )
        with self._lock:
            self._files[stored.id] = stored
            self.uploads += uploaded
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        with self._lock:
            return self._files.pop(file_id, None) is not None

    def all(self) -> list[StoredFile]:
        with self._lock:
            return sorted(self._files.values(), key=lambda f: f.created_at, reverse=True)

    def reset(self) -> None:
        with self._lock:
            self._files.clear()
            self.uploads = 0
