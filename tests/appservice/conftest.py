"""Fixtures for the appservice wire: in-process containers for unit tests, and (for the
integration tests) a real Synapse that pushes to a ``servletkit run`` subprocess."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from servletkit.container.app import build_app
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from tests.appservice.support import container_config

Wire = tuple[Container, httpx.AsyncClient]


@pytest.fixture
async def make_wire(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await make_wire({"name": plugin_obj}, **appservice_keys)`` →
    (started container, client of its app). Each call is a fresh container on the
    same store file, so calling it twice is a container restart."""
    started: list[tuple[Container, httpx.AsyncClient]] = []

    async def make(plugins: Mapping[str, Any] = {}, **appservice: Any) -> Wire:
        config = container_config(tmp_path, plugins, **appservice)
        sources = [PluginSource(name, obj=obj) for name, obj in plugins.items()]
        container = Container(config, sources)
        container.load()
        await container.start()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(container)),
                                   base_url="http://container")
        started.append((container, client))
        return container, client

    yield make
    for container, client in reversed(started):
        await client.aclose()
        await container.stop()
