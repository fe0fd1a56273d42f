"""`servletkit dev` serves the container as `servletkit run` does: no token in its log, no
connection held open without a request (the same :func:`uvicorn_config`)."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import httpx
import pytest

from servletkit.container.config import parse_config
from servletkit.container.runtime import Container
from servletkit.dev.command import DevSession
from servletkit.testing import only_plugins
from servletkit.testing.synapse import free_port

HS_TOKEN = "hs-SECRET-81d2c0"


async def test_dev_strips_tokens_and_closes_silent_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under dev's own logging (no uvicorn log config), a query-string token never reaches a
    log record, each request is still logged, and a connection that sends nothing is closed
    within two ``header_timeout_s``."""
    port = free_port()
    config = parse_config({
        "server": {"port": port, "header_timeout_s": 0.5, "keep_alive_s": 60},
        "appservice": {"as_token": "as-token", "hs_token": HS_TOKEN},
        "store": {"path": str(tmp_path / "s.db")},
        "dev": {"state_dir": str(tmp_path / "state")},
        "plugins": only_plugins({}),
    }, tmp_path / "servletkit.toml")
    container = Container(config)
    container.load()
    session = DevSession(config, out=io.StringIO())
    caplog.set_level(logging.INFO)
    # as in dev's own process, where nothing else configures uvicorn's loggers: another
    # test's uvicorn config may have raised its level or stopped its propagation
    access_logger = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access_logger, "propagate", True)
    level = access_logger.level
    access_logger.setLevel(logging.NOTSET)
    await session.serve_container(container)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ping = await client.post(f"/_matrix/app/v1/ping?access_token={HS_TOKEN}", json={})
            wrong = await client.get(f"/nowhere?access_token={HS_TOKEN}")
        assert (ping.status_code, wrong.status_code) == (200, 404)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing said
        assert time.monotonic() - started < 1.5
        writer.close()
    finally:
        assert session._server is not None and session._serving is not None
        session._server.should_exit = True  # stop() would also stop Synapse
        await session._serving
        access_logger.setLevel(level)
    access = [record.getMessage() for record in caplog.records
              if record.name == "uvicorn.access"]
    assert any('"POST /_matrix/app/v1/ping HTTP/1.1" 200' in line for line in access), access
    assert any('"GET /nowhere HTTP/1.1" 404' in line for line in access), access
    container_side = [record for record in caplog.records if record.name != "httpx"]  # not ours
    assert not [record for record in container_side if "SECRET" in record.getMessage()]
