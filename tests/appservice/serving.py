"""A container's app served by uvicorn on 127.0.0.1, in the test's own event loop.

Some behaviour only shows over a real HTTP server: how a percent-encoded path
reaches the routes, a slow body, and whether other requests are answered while
one is being handled (they share the loop with the test's client).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn

from servletkit.container.app import build_app
from servletkit.container.runtime import Container


@contextlib.asynccontextmanager
async def served(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    """Serve the (started) ``container`` on a free port of 127.0.0.1; a client of it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(container), lifespan="off",
                                           log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):  # at most 10 s
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
