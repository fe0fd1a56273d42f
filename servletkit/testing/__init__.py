"""Helpers for testing plugins: a container over plugin objects, and events to feed it.

::

    from servletkit.testing import make_event, running_container

    async def test_my_filter():
        async with running_container({"my_filter": my_filter}, {"words": ["x"]}) as container:
            outcome = await container.dispatcher.intercept("on_send_event", make_event("x y"))
        assert outcome.vetoed

``servletkit.testing.synapse`` starts a real Synapse for integration tests.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.hooks.events import Event, WireName

_event_ids = itertools.count(1)


def make_event(
    body: str | None = None,
    *,
    type: str = "m.room.message",
    content: Mapping[str, Any] | None = None,
    wire: WireName = "module",
    **fields: Any,
) -> Event:
    """An event for a test: a text message with ``body`` unless ``content``/``type`` say otherwise.

    Other client-event fields (``room_id``, ``sender``, ``state_key`` …) may be given.
    """
    if content is None:
        content = {"msgtype": "m.text", "body": body or ""}
    data = {
        "event_id": f"$test{next(_event_ids)}",
        "room_id": "!room:localhost",
        "sender": "@alice:localhost",
        "origin_server_ts": 0,
        **fields,
        "type": type,
        "content": content,
    }
    return Event.from_json(data, wire=wire)


@contextlib.asynccontextmanager
async def running_container(
    plugins: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    *,
    include_installed: bool = False,
) -> AsyncIterator[Container]:
    """A started container over ``plugins`` (name → module or object), stopped afterwards.

    ``config`` is the parsed ``servletkit.toml`` content (a dict); relative
    paths in it (the ``[store]`` file) are in a temporary folder of the
    container's own, so tests never share data. Installed plugins are left out
    unless ``include_installed``. Raises if a plugin fails to load or init, so a
    broken plugin fails its test loudly.
    """
    with tempfile.TemporaryDirectory(prefix="servletkit-test-") as folder:
        parsed = parse_config(config or {}, Path(folder) / "servletkit.toml")
        container = Container(
            parsed,
            [PluginSource(name, obj=obj) for name, obj in plugins.items()],
            include_installed=include_installed,
        )
        container.load()
        await container.start()
        try:
            if container.errors:
                error = container.errors[0]
                raise RuntimeError(f"plugin {error.plugin!r} failed to {error.stage}:\n"
                                   f"{error.traceback or error.message}")
            yield container
        finally:
            await container.stop()
