"""Loading plugins into a container: discovery, isolation of failures, lifecycle, contexts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import importlib_metadata
import pytest

from servletkit import Event, Veto, hookimpl
from servletkit.container.config import parse_config
from servletkit.container.config_tables import ConfigError
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.hooks.context import PluginContext
from servletkit.store import SqliteStore

EVENT = Event.from_json({
    "event_id": "$e", "room_id": "!r:hs", "type": "m.room.message", "sender": "@a:hs",
    "content": {"body": "buy spam"},
})


class WordVeto:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def servlet_init(self, context: PluginContext) -> None:
        self.calls.append(f"init:{context.name}:{sorted(context.config)}")

    @hookimpl
    async def servlet_destroy(self, context: PluginContext) -> None:
        self.calls.append("destroy")

    @hookimpl
    def on_send_event(self, event: Event, context: PluginContext) -> Veto | None:
        if context.config["word"] in event.content.get("body", ""):
            return Veto(f"no {context.config['word']}")
        return None


class Typo:
    @hookimpl
    def on_sned_event(self, event: Event) -> None: ...


class FailsInit:
    @hookimpl
    def servlet_init(self) -> None:
        raise ConnectionError("database unreachable")

    @hookimpl
    def on_send_event(self) -> Veto:
        return Veto("should never run")


def container(toml: dict[str, Any], *plugins: tuple[str, Any]) -> Container:
    """A container over plugin objects handed in directly (installed ones left out)."""
    config = parse_config(toml, Path("/tmp/test-servletkit.toml"))
    sources = [PluginSource(name, obj=obj) for name, obj in plugins]
    return Container(config, sources, include_installed=False)


async def test_plugins_get_their_config_and_lifecycle() -> None:
    plugin = WordVeto()
    c = container({"plugins": {"words": {"order": 3, "word": "spam"}}}, ("words", plugin))
    c.load()
    await c.start()
    outcome = await c.dispatcher.intercept("on_send_event", EVENT)
    await c.stop()
    assert outcome.decision == Veto("no spam") and outcome.decided_by == "words"
    assert plugin.calls == ["init:words:['word']", "destroy"]


async def test_unknown_hook_is_rejected_with_a_hint() -> None:
    c = container({}, ("typo", Typo()), ("words", WordVeto()))
    c.load()
    await c.start()
    [error] = c.errors
    assert error.plugin == "typo" and error.stage == "register"
    assert "on_sned_event (did you mean on_send_event?)" in error.message
    assert c.live_plugins == ["words"]


async def test_import_failure_is_reported_with_traceback_and_the_rest_run() -> None:
    broken = importlib_metadata.EntryPoint(
        name="broken", value="servletkit_no_such_module_xyz", group="servletkit.plugins"
    )
    config = parse_config({}, Path("/tmp/x.toml"))
    sources = [PluginSource.from_entry_point(broken), PluginSource("words", obj=WordVeto())]
    c = Container(config, sources, include_installed=False)
    c.load()
    await c.start()
    [error] = c.errors
    assert error.plugin == "broken" and error.stage == "import"
    assert "ModuleNotFoundError" in error.message
    assert "Traceback" in error.traceback
    assert c.live_plugins == ["words"]


async def test_init_failure_unloads_only_that_plugin() -> None:
    c = container({}, ("fails", FailsInit()), ("words", WordVeto()))
    c.load()
    await c.start()
    assert [(e.plugin, e.stage) for e in c.errors] == [("fails", "init")]
    assert "database unreachable" in c.errors[0].message
    assert c.live_plugins == ["words"]
    outcome = await c.dispatcher.intercept("on_send_event", EVENT)
    assert outcome.decided_by != "fails"


async def test_disabled_plugin_is_listed_but_not_loaded() -> None:
    plugin = WordVeto()
    c = container({"plugins": {"words": {"enabled": False}}}, ("words", plugin))
    c.load()
    await c.start()
    [status] = c.statuses()
    assert (status.name, status.enabled, status.live) == ("words", False, False)
    assert plugin.calls == []


def test_a_table_for_a_plugin_that_is_not_installed_fails() -> None:
    c = container({"plugins": {"wrod_filter": {}}}, ("word_filter", WordVeto()))
    with pytest.raises(ConfigError) as info:
        c.load()
    assert info.value.key == "plugins.wrod_filter"
    assert "no installed plugin is called 'wrod_filter' (installed: word_filter)" in str(info.value)


async def test_statuses_list_hooks_and_order() -> None:
    c = container({"plugins": {"b": {"order": 1}, "a": {"order": 2}}},
                  ("a", WordVeto()), ("b", FailsInit()))
    c.load()
    await c.start()
    rows = c.statuses()
    assert [(r.name, r.order, r.live) for r in rows] == [("b", 1, False), ("a", 2, True)]
    assert rows[1].hooks == ("on_send_event", "servlet_destroy", "servlet_init")
    assert rows[0].error is not None and rows[0].error.stage == "init"


async def test_start_opens_the_store_before_servlet_init(tmp_path: Path) -> None:
    """A container started without the app has an open store when plugins first use it (a
    networked store cannot open itself lazily as the SQLite file does)."""
    opened_at_init: list[bool] = []

    class Opening(SqliteStore):
        is_open = False

        async def open(self) -> None:
            self.is_open = True
            await super().open()

    class Init:
        @hookimpl
        async def servlet_init(self, context: PluginContext) -> None:
            opened_at_init.append(store.is_open)

    store = Opening(tmp_path / "s.db")
    config = parse_config({}, tmp_path / "servletkit.toml")
    c = Container(config, [PluginSource("init", obj=Init())], include_installed=False,
                  store=store)
    c.load()
    await c.start()
    await c.stop()
    assert opened_at_init == [True]
