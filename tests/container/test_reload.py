"""Reloading one plugin in a running container (issue 13): a new version beside the old,
swapped in at once, the old one drained and destroyed; a broken version never serves."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from servletkit import Modify, Veto
from servletkit.container.runtime import Container
from servletkit.testing import make_event, only_plugins, running_container
from tests.container.reload_support import PluginOnDisk, importable_plugin

_names = itertools.count(1)

VETO_X = '''
@hookimpl
def on_send_event(event, context):
    if "x" in event.content.get("body", ""):
        return Veto(f"no x (version {VERSION})")
    return None
'''

SHOUT = '''
@hookimpl
def on_send_event(event, context):
    return Modify(content={**event.content, "body": event.content["body"].upper()})
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginOnDisk]:
    """A plugin installed in a folder on ``sys.path``, version 0.1 vetoing ``x``."""
    on_disk = importable_plugin(tmp_path, monkeypatch, f"reloady{next(_names)}")
    on_disk.write("0.1", VETO_X)
    yield on_disk
    on_disk.forget()


@pytest.fixture
async def container(plugin: PluginOnDisk) -> AsyncIterator[Container]:
    config = {"plugins": only_plugins({plugin.name: {}})}
    async with running_container({}, config, include_installed=True) as c:
        c.drain_timeout_s = 5.0
        yield c


async def body_decision(container: Container, body: str) -> object:
    outcome = await container.dispatcher.intercept("on_send_event", make_event(body))
    return outcome.decision


async def test_a_reload_swaps_in_the_new_version(
    container: Container, plugin: PluginOnDisk
) -> None:
    """New behaviour and version serve after the reload; the old one was destroyed."""
    assert await body_decision(container, "x") == Veto("no x (version 0.1)")
    plugin.write("0.2", SHOUT)
    result = await container.reload(plugin.name)
    assert result.ok, result.error
    assert (result.old, result.new) == ("0.1#1", "0.2#2")
    assert result.describe().startswith(f"{plugin.name}: reloaded 0.1#1 -> 0.2#2 in ")
    assert await body_decision(container, "x") == Modify(
        content={"msgtype": "m.text", "body": "X"})
    await container.drained()
    assert plugin.events == [("init", "0.1"), ("init", "0.2"), ("destroy", "0.1")]
    assert not container.pm.is_registered(container.pm.get_plugin(plugin.name))
    assert [status.loaded_version for status in container.statuses()
            if status.name == plugin.name] == ["0.2#2"]


async def test_the_same_size_edit_is_seen(
    container: Container, plugin: PluginOnDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-character edit within the same second is imported (no stale bytecode)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    for version in ("0.2", "0.3", "0.4"):
        plugin.write(version, VETO_X)
        assert (await container.reload(plugin.name)).ok
        assert await body_decision(container, "x") == Veto(f"no x (version {version})")


async def test_submodules_are_imported_afresh(
    container: Container, plugin: PluginOnDisk
) -> None:
    """Changed submodules and a new sub-package are seen; the old version keeps its own."""
    uses_helper = '''
    from .helper import word

    @hookimpl
    def on_send_event(event, context):
        return Veto(word()) if "x" in event.content["body"] else None
    '''
    plugin.write("0.2", uses_helper, files={"helper.py": "def word():\n    return 'one'\n"})
    assert (await container.reload(plugin.name)).ok
    assert await body_decision(container, "x") == Veto("one")
    old_helper = sys.modules[f"{plugin.name}.helper"]
    plugin.write("0.3", uses_helper, files={
        "helper.py": "from .deep.words import WORD\n\ndef word():\n    return WORD\n",
        "deep/__init__.py": "", "deep/words.py": "WORD = 'two'\n"})
    assert (await container.reload(plugin.name)).ok
    assert await body_decision(container, "x") == Veto("two")
    assert sys.modules[f"{plugin.name}.helper"] is not old_helper
    assert old_helper.word() == "one"  # the old version's module is untouched


async def test_a_new_entry_point_value_is_seen(
    container: Container, plugin: PluginOnDisk
) -> None:
    """The entry point is read again: now it names a class in a submodule."""
    plugin.write("0.2", "", entry_point=f"{plugin.name}.impl:Filter", files={"impl.py": '''
        from servletkit import Veto, hookimpl

        class Filter:
            @hookimpl
            def on_send_event(self, event, context):
                return Veto("from the class")
    '''})
    result = await container.reload(plugin.name)
    assert result.ok, result.error
    assert await body_decision(container, "hello") == Veto("from the class")


@pytest.mark.parametrize(("body", "stage", "message"), [
    ("def broken(:\n", "import", "SyntaxError"),
    ("raise RuntimeError('no import for you')\n", "import", "no import for you"),
    ("@hookimpl\ndef on_send_evnt(event, context):\n    pass\n", "register",
     "on_send_evnt (did you mean on_send_event?)"),
    ("@hookimpl\ndef servlet_init(context):\n    raise ValueError('bad config')\n", "init",
     "ValueError: bad config"),
])
async def test_a_broken_version_never_serves(
    container: Container, plugin: PluginOnDisk, body: str, stage: str, message: str
) -> None:
    """A version that fails to import, register or init is reported; the old one serves on,
    its modules back in ``sys.modules``; a fixed version then reloads."""
    old_module = sys.modules[plugin.name]
    plugin.write("0.2", VETO_X + body)
    result = await container.reload(plugin.name)
    assert not result.ok and result.new is None and result.old == "0.1#1"
    assert result.error is not None and result.error.stage == stage
    assert message in result.error.message
    assert "0.1#1 keeps serving" in result.describe()
    assert await body_decision(container, "x") == Veto("no x (version 0.1)")
    assert sys.modules[plugin.name] is old_module
    assert [name for name, _ in container.pm.list_name_plugin()] == [plugin.name]
    assert [status.error.stage for status in container.statuses()
            if status.error] == [stage]
    plugin.write("0.3", VETO_X)
    result = await container.reload(plugin.name)
    assert result.ok and result.new == "0.3#2"  # the broken one never served: no number
    assert container.errors == []
    await container.drained()
    assert ("destroy", "0.1") in plugin.events and ("destroy", "0.2") not in plugin.events


async def test_calls_in_flight_finish_on_the_old_version(
    container: Container, plugin: PluginOnDisk
) -> None:
    """A call that started before the swap answers from the old version, which is
    destroyed only once it has; calls after the swap go to the new one."""
    plugin.write("0.2", '''
    import asyncio
    gate = asyncio.Event()

    @hookimpl
    async def on_send_event(event, context):
        if event.content["body"] == "wait":
            await gate.wait()
        return Veto(f"version {VERSION}")
    ''')
    assert (await container.reload(plugin.name)).ok
    await container.drained()
    gate = sys.modules[plugin.name].gate
    slow = asyncio.create_task(body_decision(container, "wait"))
    await asyncio.sleep(0.01)
    assert container.dispatcher.in_flight(f"{plugin.name}@2") == 1
    plugin.write("0.3", SHOUT)
    assert (await container.reload(plugin.name)).ok
    assert await body_decision(container, "y") == Modify(content={"msgtype": "m.text",
                                                                  "body": "Y"})
    await asyncio.sleep(0.05)
    assert ("destroy", "0.2") not in plugin.events
    assert [old.label for old in container.retiring] == ["0.2#2"]
    gate.set()
    assert await slow == Veto("version 0.2")
    await container.drained()
    assert plugin.events[-1] == ("destroy", "0.2")
    assert container.retiring == []


async def test_a_stuck_call_does_not_keep_the_old_version_forever(
    container: Container, plugin: PluginOnDisk, caplog: pytest.LogCaptureFixture
) -> None:
    """After the drain time limit the old version is destroyed anyway, with a warning."""
    plugin.write("0.2", '''
    import asyncio

    @hookimpl
    async def on_send_event(event, context):
        await asyncio.sleep(0.5)
    ''')
    assert (await container.reload(plugin.name)).ok
    container.drain_timeout_s = 0.05
    stuck = asyncio.create_task(body_decision(container, "wait"))
    await asyncio.sleep(0.01)
    plugin.write("0.3", VETO_X)
    with caplog.at_level(logging.WARNING, "servletkit.container"):
        assert (await container.reload(plugin.name)).ok
        await asyncio.wait_for(container.drained(), 0.4)
    assert plugin.events[-1] == ("destroy", "0.2")
    assert "still had 1 calls in flight" in caplog.text
    stuck.cancel()


async def test_live_state_counts_calls_and_errors_per_version(
    container: Container, plugin: PluginOnDisk
) -> None:
    """``statuses()`` gives the serving version, since when, and its own calls and errors."""
    plugin.write("0.2", '''
    @hookimpl
    def on_send_event(event, context):
        if event.content["body"] == "boom":
            raise RuntimeError("boom")
    ''')
    assert (await container.reload(plugin.name)).ok
    for body in ["a", "boom", "b"]:
        await body_decision(container, body)
    [status] = [row for row in container.statuses() if row.name == plugin.name]
    assert (status.loaded_version, status.calls, status.errors) == ("0.2#2", 3, 1)
    since = status.since
    other = container.version(plugin.name)
    container._rebuild()  # e.g. another plugin reloaded: the figures carry over
    await body_decision(container, "c")
    [status] = [row for row in container.statuses() if row.name == plugin.name]
    assert (status.calls, status.errors, status.since) == (4, 1, since)
    assert container.version(plugin.name) is other
    assert status.as_json()["loaded_version"] == "0.2#2"


async def test_a_plugin_that_is_not_installed_fails_to_reload(container: Container) -> None:
    """Reloading an unknown name says so and changes nothing."""
    result = await container.reload("nonesuch")
    assert not result.ok and result.old is None
    assert result.error is not None
    assert "no installed plugin is called 'nonesuch'" in result.error.message


async def test_the_plugins_table_is_read_again(tmp_path: Path, plugin: PluginOnDisk) -> None:
    """A ``[plugins.NAME]`` table changed in the file reaches the reloaded version; a broken
    file or a disabled table fails the reload and the old version serves on."""
    from servletkit.container.config import load_config
    from servletkit.testing import plugins_toml

    path = tmp_path / "servletkit.toml"
    others = {name: table for name, table in only_plugins({}).items() if name != plugin.name}
    path.write_text(plugins_toml(others))
    plugin.write("0.1", '''
    @hookimpl
    def on_send_event(event, context):
        return Veto(context.config.get("word", "no table"))
    ''')
    container = Container(load_config(path), include_installed=True)
    container.load()
    await container.start()
    try:
        assert await body_decision(container, "x") == Veto("no table")
        path.write_text(plugins_toml({**others, plugin.name: {"word": "from the table"}}))
        assert (await container.reload(plugin.name)).ok
        assert await body_decision(container, "x") == Veto("from the table")
        path.write_text("[server]\nport = 'eighty'\n")
        result = await container.reload(plugin.name)
        assert result.error is not None and result.error.stage == "config"
        assert "server.port: must be an integer" in result.error.message
        path.write_text(plugins_toml({**others, plugin.name: {"enabled": False}}))
        result = await container.reload(plugin.name)
        assert result.error is not None and "enabled = false" in result.error.message
        assert await body_decision(container, "x") == Veto("from the table")
    finally:
        await container.stop()
