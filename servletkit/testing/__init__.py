"""Helpers for testing plugins: a container over plugin objects, and events to feed it.

The kit (:mod:`servletkit.testing.kit`, and the ``plugin_runner`` fixture of
the pytest plugin :mod:`servletkit.testing.pytest_plugin`)::

    async def test_it_vetoes_spam(plugin_runner):
        run = await plugin_runner(my_filter, {"words": ["spam"]})
        assert_vetoed(await run.send(message("buy spam")), reason="spam")

With the container itself::

    from servletkit.testing import make_event, running_container

    async def test_my_filter():
        async with running_container({"my_filter": my_filter}, {"words": ["x"]}) as container:
            outcome = await container.dispatcher.intercept("on_send_event", make_event("x y"))
        assert outcome.vetoed

``servletkit.testing.synapse`` starts a real Synapse for integration tests.

A test that runs ``servletkit`` on a config file must not depend on which other
plugins happen to be installed (a user's own, installed as the README shows)::

    tables = only_plugins({"my_filter": {"words": ["x"]}})   # every other one disabled
    config.write_text(plugins_toml(tables))
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from servletkit.container.config import parse_config
from servletkit.container.plugins import ENTRY_POINT_GROUP, PluginSource, installed_plugins
from servletkit.container.runtime import Container
from servletkit.hooks.events import Event, WireName

__all__ = ["HookResult", "PluginRunner", "RunnerFactory", "assert_allowed", "assert_modified",
           "assert_vetoed",
           "invite", "join", "make_event", "message", "only_plugins", "plugin_client",
           "plugin_site",
           "plugins_toml", "python_path_env", "running_container", "state"]

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


def only_plugins(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``[plugins.NAME]`` tables under which only the plugins in ``tables`` run.

    ``tables`` maps a plugin's name to its table; every other plugin installed in
    this environment gets ``enabled = false``, so a test's outcome does not
    depend on what else is installed.
    """
    disabled = {name: {"enabled": False} for name in installed_plugins() if name not in tables}
    return {**{name: dict(table) for name, table in tables.items()}, **disabled}


def plugins_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """``tables`` written as ``[plugins.NAME]`` tables of a ``servletkit.toml``.

    Values may be strings, numbers, booleans and arrays of them (their JSON
    spelling is valid TOML).
    """
    lines = []
    for name, table in tables.items():
        lines.append(f"[plugins.{json.dumps(name)}]")
        lines.extend(f"{json.dumps(key)} = {json.dumps(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def plugin_site(folder: Path, name: str, code: str) -> Path:
    """A folder for ``PYTHONPATH`` in which plugin ``name`` is installed; return it.

    The plugin is module ``{name}_plugin`` with source ``code``, in a
    distribution ``{name}-plugin`` 0.1 whose entry point names it, as pip would
    install it. See :func:`python_path_env`.
    """
    site = folder / "site"
    dist_info = site / f"{name}_plugin-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (site / f"{name}_plugin.py").write_text(code)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {name}_plugin\n")
    return site


def python_path_env(*folders: Path) -> dict[str, str]:
    """This process's environment with ``folders`` first on ``PYTHONPATH``, for a subprocess.

    What ``PYTHONPATH`` held already is kept after them, so the subprocess sees
    the same installed plugins as this process, and those in ``folders``.
    """
    paths = [*map(str, folders), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


# the kit imports running_container from here, so it comes last
from servletkit.testing.kit import (  # noqa: E402
    HookResult,
    PluginRunner,
    RunnerFactory,
    assert_allowed,
    assert_modified,
    assert_vetoed,
    invite,
    join,
    message,
    plugin_client,
    state,
)
