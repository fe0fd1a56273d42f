"""A minimal HTTP/1.1 keep-alive client over asyncio streams, for load generators.

httpx, one ``AsyncClient`` per simulated sender in one process, collapses under
concurrency on this 2-core machine: 8 of them PUTting 20-event transactions to a bare
Starlette endpoint reached 613 events/s against 1,106 with one (and as low as 65), while
this client went from 6,366 to 11,799 (2026-11-28). A benchmark measuring a server's
concurrency must not be limited by its own client, so the benchmarks that send many
requests at once write them by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


def request(method: str, path: str, body: bytes = b"",
            headers: Mapping[str, str] | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request with ``body`` (its Content-Length set)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1",
             f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of the next response on a keep-alive connection (Content-Length
    framing, as uvicorn answers)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)
