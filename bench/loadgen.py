"""A minimal keep-alive HTTP/1.1 POST client for load generation in the benchmark only.

Not product code: the gateway serves real clients through uvicorn. On this 2-core machine
httpx's async client spent ~4 CPU-ms per request, more than the gateway itself, so the
client, not the gateway, set the pace. This one writes a request and reads a
``Content-Length`` response on a kept-alive socket, at a small fraction of that cost; clients
normally run on other machines.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["Connection"]


class Connection:
    """One kept-alive connection; ``post`` may not be called concurrently on it."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self._head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        """POST ``body`` as JSON; return the status and the decoded JSON answer."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        payload = json.dumps(body).encode()
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{self._head}"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode()
            + payload
        )
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        status = int(status_line.split()[1])
        return status, json.loads(await reader.readexactly(length))

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            writer.close()
            await writer.wait_closed()
            self._streams = None
