"""A hook is declared in one place: a throwaway interception hook, added as one decorated
specification, is dispatched, listed by `servletkit plugins`, and carried by the module wire."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator

import pytest

from servletkit import Veto, hookimpl
from servletkit.container.cli import plugins_table
from servletkit.container.config import parse_config
from servletkit.container.plugins import PluginSource
from servletkit.container.runtime import Container
from servletkit.hooks import specs
from servletkit.hooks.decisions import Decision
from servletkit.hooks.table import HookTable, ModuleCall, interception
from servletkit.testing.synapse import free_port
from servletkit.wires.module.listener import module_wire
from tests.module_wire.conftest import SECRET
from tests.module_wire.test_listener import Peer


@interception(module=ModuleCall("knock", (("user_id", "str"), ("room_id", "str")), ()))
def on_knock(user_id: str, room_id: str, context: object) -> Decision | None:
    """A user knocks on a room (a throwaway hook for this test).

    :param user_id: who knocks.
    :param room_id: where.
    :param context: the plugin's context.
    :returns: ``Veto`` to refuse the knock.
    """


KNOCK_SPECS = types.ModuleType("knock_specs")
KNOCK_SPECS.on_knock = on_knock  # type: ignore[attr-defined]
TABLE = HookTable.from_modules(specs, KNOCK_SPECS)


class Doorkeeper:
    """Refuses knocks on rooms whose id says so."""

    @hookimpl
    def on_knock(self, user_id: str, room_id: str) -> Veto | None:
        return Veto(f"{user_id} may not knock", errcode="M_KNOCK") if "closed" in room_id else None


@pytest.fixture
async def container(tmp_path) -> AsyncIterator[Container]:
    config = parse_config({
        "store": {"path": str(tmp_path / "s.db")},
        "module": {"enabled": True, "port": free_port(), "secret": SECRET},
    })
    container = Container(config, [PluginSource("doorkeeper", obj=Doorkeeper())],
                          include_installed=False, hooks=TABLE)
    container.load()
    await container.start()
    yield container
    await container.stop()


def test_the_table_knows_the_new_hook() -> None:
    """Its kind, its op and that it may not modify all come from the one declaration."""
    assert "on_knock" in TABLE.of_kind("interception")
    assert TABLE.module_ops["knock"].name == "on_knock"
    assert "on_knock" not in TABLE.modifiable
    assert "on_knock" not in specs.HOOKS.names  # the shipped table is untouched


async def test_it_is_dispatched(container: Container) -> None:
    """The dispatcher builds its chain and runs it."""
    outcome = await container.dispatcher.intercept("on_knock", "@a:localhost", "!closed:x")
    assert outcome.vetoed and outcome.decided_by == "doorkeeper"
    outcome = await container.dispatcher.intercept("on_knock", "@a:localhost", "!open:x")
    assert outcome.decision is None


async def test_it_is_listed_by_servletkit_plugins(container: Container) -> None:
    """`servletkit plugins` shows the plugin implementing it."""
    [row] = [line for line in plugins_table(container).splitlines() if "doorkeeper" in line]
    assert "on_knock" in row.split()


async def test_it_is_carried_by_the_module_wire(container: Container) -> None:
    """A module-wire request with its op reaches the plugin, and the veto comes back."""
    wire = module_wire(container)
    assert wire is not None
    async with wire.lifespan():
        reader, writer = await asyncio.open_connection("127.0.0.1", container.config.module.port)
        peer = Peer(reader, writer)
        try:
            assert (await peer.hello()) == {"op": "hello", "protocol": 1}
            await peer.send({"id": 1, "op": "knock", "user_id": "@a:localhost",
                             "room_id": "!closed:x"})
            assert await peer.receive() == {
                "id": 1, "veto": {"errcode": "M_KNOCK", "reason": "@a:localhost may not knock"}}
            await peer.send({"id": 2, "op": "knock", "user_id": 5, "room_id": "!closed:x"})
            reply = await peer.receive()
            assert reply["error"]["errcode"] == "M_BAD_JSON"
            assert "user_id: must be a string" in reply["error"]["error"]
        finally:
            writer.close()
