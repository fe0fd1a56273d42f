"""A homeserver (or anyone) sending a body too slowly gets an answer, not a hung request."""

from __future__ import annotations

import asyncio
import time

import orjson

from tests.appservice.serving import served
from tests.appservice.support import HS_TOKEN


async def test_a_body_too_slow_is_408(make_wire):
    """A transaction whose body stops arriving gets 408 once body_timeout_s has passed."""
    container, _ = await make_wire(body_timeout_s=0.3)
    async with served(container) as client:
        port = client.base_url.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"PUT /_matrix/app/v1/transactions/slow HTTP/1.1\r\nHost: c\r\n"
                         b"Authorization: Bearer " + HS_TOKEN.encode() + b"\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                         b'{"events": [')
            await writer.drain()
            started = time.monotonic()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            took = time.monotonic() - started
            length = next(int(line.partition(b":")[2]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await asyncio.wait_for(reader.readexactly(length), 5)
        finally:
            writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    error = orjson.loads(body)
    assert error["errcode"] == "M_UNKNOWN"
    assert "[appservice] body_timeout_s" in error["error"]
    assert 0.3 <= took < 2
