"""Fixtures for the policy wire's unit tests: a started container with test plugins,
its policy wire (in process, no listener) and a fake remote homeserver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.testing import only_plugins
from servletkit.wires.policy.keys import load_keys
from servletkit.wires.policy.rooms import Rooms
from servletkit.wires.policy.wire import PolicyWire
from tests.policy.support import POLICY, REMOTE, ROOM, RemoteServer

Setup = tuple[PolicyWire, httpx.AsyncClient, RemoteServer]


@pytest.fixture
async def make_policy(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await make_policy({"name": plugin})`` → (wire, client of its federation
    app, the remote server); ``others``: more remote servers whose keys it can fetch;
    ``fallback``: where requests for any other server go (default: a 404); ``options``:
    more :class:`PolicyWire` arguments. The room :data:`ROOM` (version 12) is served."""
    opened: list[tuple[Container, httpx.AsyncClient, httpx.AsyncClient, PolicyWire]] = []

    async def make(plugins: Mapping[str, Any] = {}, others: Sequence[RemoteServer] = (),
                   fallback: httpx.AsyncBaseTransport | None = None, **options: Any) -> Setup:
        config = parse_config({
            "policy": {"server_name": POLICY, "server_urls": {REMOTE: f"http://{REMOTE}"}},
            "plugins": only_plugins({name: {"timeout_ms": 2000} for name in plugins}),
        }, tmp_path / "servletkit.toml")
        container = Container(config, [PluginSource(n, obj=o) for n, o in plugins.items()])
        container.load()
        await container.start()
        remote = RemoteServer()
        http = httpx.AsyncClient(transport=remote.transport(*others, fallback=fallback))
        state = tmp_path / "policy"
        rooms = Rooms(container.store, state)
        await rooms.add(ROOM, "12", "joined", REMOTE)
        wire = PolicyWire(container.dispatcher, POLICY, load_keys(state), rooms,
                          server_urls={server.name: f"http://{server.name}"
                                       for server in (remote, *others)},
                          ready=container.ready,
                          http=http, **options)
        await wire.note_served_rooms()  # as the wire's lifespan does at start
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=wire.app),
                                   base_url=f"https://{POLICY}")
        opened.append((container, client, http, wire))
        return wire, client, remote

    yield make
    for container, client, http, wire in reversed(opened):
        for task in list(wire._background):  # a join after an invite, still retrying
            task.cancel()
        await client.aclose()
        await http.aclose()
        await container.stop()
