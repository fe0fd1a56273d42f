"""``servletkit dev``'s reloader (issue 13): saving an editable plugin's file reloads it."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from servletkit import Modify, Veto
from servletkit.container.config import parse_config
from servletkit.container.runtime import Container
from servletkit.dev.watch import PluginWatcher, WatchedPlugin, touched, watched_plugins
from servletkit.testing import make_event, only_plugins, running_container
from tests.container.reload_support import PluginOnDisk, importable_plugin
from tests.container.test_reload import SHOUT, VETO_X

LINE_TIMEOUT_S = 10.0


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginOnDisk]:
    on_disk = importable_plugin(tmp_path, monkeypatch, "watchy", editable=True)
    on_disk.write("0.1", VETO_X)
    yield on_disk
    on_disk.forget()


class Lines:
    """What the watcher reports, awaitable line by line."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def __call__(self, line: str) -> None:
        self.queue.put_nowait(line)

    async def next(self) -> str:
        return await asyncio.wait_for(self.queue.get(), LINE_TIMEOUT_S)


@pytest.fixture
async def watching(plugin: PluginOnDisk) -> AsyncIterator[tuple[Container, Lines]]:
    config = {"plugins": only_plugins({plugin.name: {}})}
    async with running_container({}, config, include_installed=True) as container:
        lines = Lines()
        task = asyncio.create_task(PluginWatcher(container, lines).run())
        await asyncio.sleep(0.3)  # the watcher has started watching
        try:
            yield container, lines
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def decision(container: Container, body: str) -> object:
    return (await container.dispatcher.intercept("on_send_event", make_event(body))).decision


async def test_a_save_reloads_the_plugin_and_says_so(
    watching: tuple[Container, Lines], plugin: PluginOnDisk
) -> None:
    """One line per save: the old and new version and the time; a broken save leaves the
    old version serving and says why; the next good save (with a new submodule) serves."""
    container, lines = watching
    plugin.write("0.1", SHOUT)
    assert re.fullmatch(r"watchy: reloaded 0\.1#1 -> 0\.1#2 in \d+ ms", await lines.next())
    assert await decision(container, "hi") == Modify(content={"msgtype": "m.text",
                                                              "body": "HI"})
    plugin.write("0.1", "def broken(:\n")
    line = await lines.next()
    assert line.startswith("watchy: reload failed after ")
    assert "(import: SyntaxError" in line and line.endswith("0.1#2 keeps serving")
    assert await decision(container, "hi") == Modify(content={"msgtype": "m.text",
                                                              "body": "HI"})
    plugin.write("0.1", "from .words import on_send_event\n", files={"words.py": (
        "from servletkit import Veto, hookimpl\n\n@hookimpl\n"
        "def on_send_event(event, context):\n    return Veto('words')\n")})
    assert (await lines.next()).startswith("watchy: reloaded 0.1#2 -> 0.1#3 in ")
    assert await decision(container, "hi") == Veto("words")
    await container.drained()
    assert plugin.events.count(("destroy", "0.1")) == 2  # versions 1 and 2


async def test_plugins_not_installed_editable_are_not_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``direct_url.json`` saying editable, the plugin is left alone."""
    plain = importable_plugin(tmp_path, monkeypatch, "plainy")
    plain.write("1.0", VETO_X)
    try:
        config = {"plugins": only_plugins({plain.name: {}})}
        async with running_container({}, config, include_installed=True) as container:
            assert watched_plugins(container) == []
            await asyncio.wait_for(PluginWatcher(container, print).run(), 1)  # returns
    finally:
        plain.forget()


def test_a_change_touches_its_own_plugin_or_every_one_sharing_the_package(
    tmp_path: Path,
) -> None:
    """An entry module's file touches its plugin only; a helper touches the package's all."""
    package = tmp_path / "pkg"
    filters = WatchedPlugin("filter", package / "filter.py", package)
    formats = WatchedPlugin("formatter", package / "formatter.py", package)
    other = WatchedPlugin("other", tmp_path / "other" / "__init__.py", tmp_path / "other")
    plugins = [filters, formats, other]
    assert touched(plugins, [package / "filter.py"]) == ["filter"]
    assert touched(plugins, [package / "common" / "words.py"]) == ["filter", "formatter"]
    assert touched(plugins, [tmp_path / "other" / "x.py", package / "formatter.py"]) == [
        "formatter", "other"]
    assert touched(plugins, [tmp_path / "elsewhere.py"]) == []


@pytest.mark.parametrize("broken", [
    "def broken(:\n",  # fails to import
    "@hookimpl\ndef servlet_init(context):\n    raise RuntimeError('not yet')\n",  # to init
])
async def test_a_plugin_that_failed_at_start_is_watched_and_loads_when_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """A plugin broken at start is still watched; saving the fix loads it, one line."""
    plugin = importable_plugin(tmp_path, monkeypatch, "fixy", editable=True)
    plugin.write("0.1", broken)
    config = parse_config({"plugins": only_plugins({plugin.name: {}})},
                          tmp_path / "servletkit.toml")
    container = Container(config)  # its store: a file beside the config
    container.load()
    await container.start()
    try:
        assert container.live_plugins == [] and container.errors
        [watched] = watched_plugins(container)
        assert (watched.name, watched.root) == (plugin.name, (plugin.site / plugin.name).resolve())
        lines = Lines()
        task = asyncio.create_task(PluginWatcher(container, lines).run())
        await asyncio.sleep(0.3)  # the watcher has started watching
        plugin.write("0.1", VETO_X)
        assert re.fullmatch(r"fixy: reloaded not loaded -> 0\.1#\d in \d+ ms",
                            await lines.next())
        assert container.live_plugins == [plugin.name]
        assert await decision(container, "x") == Veto("no x (version 0.1)")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await container.stop()
        plugin.forget()


PYPROJECT = """
[project]
name = "pyprojy"
version = "0.1"
{dynamic}
[project.entry-points."servletkit.plugins"]
pyprojy = "pyprojy"
{extra}
"""

EXTRA = """
from servletkit import Veto, hookimpl

@hookimpl
def on_join_room(user_id, room_id, context):
    return Veto("extra")
"""


async def test_a_new_entry_point_in_pyproject_loads_without_a_reinstall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An editable plugin's pyproject.toml gains an entry point: the watcher reloads the
    distribution with it and the new plugin serves, nothing reinstalled; entry points the
    file cannot declare statically get one line saying to deploy."""
    # its project folder: the package
    plugin = importable_plugin(tmp_path, monkeypatch, "pyprojy", editable=True)
    plugin.write("0.1", VETO_X, files={"extra.py": EXTRA})
    pyproject = plugin.site / plugin.name / "pyproject.toml"
    pyproject.write_text(PYPROJECT.format(dynamic="", extra=""))
    config = {"plugins": only_plugins({plugin.name: {}})}
    try:
        async with running_container({}, config, include_installed=True) as container:
            lines = Lines()
            task = asyncio.create_task(PluginWatcher(container, lines).run())
            await asyncio.sleep(0.3)
            pyproject.write_text(PYPROJECT.format(dynamic="",
                                                  extra='pyprojy_extra = "pyprojy.extra"'))
            reported = {(await lines.next()).split(":")[0] for _ in range(2)}
            assert reported == {"pyprojy", "pyprojy_extra"}
            assert container.live_plugins == ["pyprojy", "pyprojy_extra"]
            refused = await container.dispatcher.intercept("on_join_room", "@a:x", "!r:x")
            assert refused.decision == Veto("extra")
            pyproject.write_text(PYPROJECT.format(dynamic='dynamic = ["entry-points"]',
                                                  extra=""))
            line = await lines.next()
            assert line.endswith(f"run `servletkit deploy {pyproject.parent}` to apply them")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        plugin.forget()
