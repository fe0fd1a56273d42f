"""A chain counts its runs in flight, which a reload waits for; a versioned plugin name
answers as the plugin (issue 13)."""

from __future__ import annotations

import asyncio

import pytest

from servletkit import Veto, hookimpl
from servletkit.container.plugins import PluginSource, new_plugin_manager, register
from servletkit.hooks.dispatcher import Dispatcher, PluginPolicy
from servletkit.testing import make_event


class Gated:
    """Answers once its gate opens; for sync and async observation alike."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    @hookimpl
    async def on_send_event(self, event):
        await self.gate.wait()
        return Veto("gated")

    @hookimpl
    async def on_stored_event(self, event):
        await self.gate.wait()


def dispatcher_over(plugins: dict[str, object], names: dict[str, str] | None = None
                    ) -> Dispatcher:
    pm = new_plugin_manager()
    for name, obj in plugins.items():
        register(pm, PluginSource(name, obj=obj))
    dispatcher = Dispatcher(pm)
    dispatcher.rebuild({name: (PluginPolicy(), None) for name in plugins}, names)
    return dispatcher


async def test_an_interception_is_in_flight_until_it_ends() -> None:
    """In flight while the plugin is suspended; not after; the old chain keeps the count
    after a rebuild, the new one starts at zero."""
    gated = Gated()
    dispatcher = dispatcher_over({"gated": gated})
    [chain] = [c for c in dispatcher.chains() if c.hook == "on_send_event"]
    call = asyncio.create_task(dispatcher.intercept("on_send_event", make_event("x")))
    await asyncio.sleep(0)
    assert chain.in_flight == 1
    dispatcher.rebuild({"gated": (PluginPolicy(), None)})
    [new] = [c for c in dispatcher.chains() if c.hook == "on_send_event"]
    assert new is not chain and new.in_flight == 0
    gated.gate.set()
    assert (await call).vetoed
    assert chain.in_flight == 0


@pytest.mark.parametrize("raises", [False, True])
async def test_a_cancelled_or_failed_run_is_no_longer_in_flight(raises: bool) -> None:
    """Cancellation and a plugin's exception both end the run."""

    class Boom:
        @hookimpl
        def on_send_event(self, event):
            raise RuntimeError("boom")

    gated = Gated()
    dispatcher = dispatcher_over({"p": Boom() if raises else gated})
    [chain] = [c for c in dispatcher.chains() if c.hook == "on_send_event"]
    call = asyncio.create_task(dispatcher.intercept("on_send_event", make_event("x")))
    await asyncio.sleep(0)
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert chain.in_flight == 0 and chain.runs[0] == 1


async def test_concurrent_async_observers_count_one_run_until_all_are_done() -> None:
    """Observers run as separate tasks still count as one run in flight on the chain."""
    first, second = Gated(), Gated()
    dispatcher = dispatcher_over({"a": first, "b": second})
    [chain] = [c for c in dispatcher.chains() if c.hook == "on_stored_event"]
    run = asyncio.create_task(dispatcher.observe("on_stored_event", make_event("x")))
    await asyncio.sleep(0.01)
    assert chain.in_flight == 1
    first.gate.set()
    await asyncio.sleep(0.01)
    assert chain.in_flight == 1
    second.gate.set()
    assert await run == ()
    assert chain.in_flight == 0


async def test_a_versioned_registration_answers_as_the_plugin() -> None:
    """``names`` maps ``plugin@2`` in pluggy to the name outcomes and failures carry."""

    class Vetoer:
        @hookimpl
        def on_send_event(self, event):
            return Veto("no")

    dispatcher = dispatcher_over({"filter@2": Vetoer()}, {"filter@2": "filter"})
    outcome = await dispatcher.intercept("on_send_event", make_event("x"))
    assert outcome.decided_by == "filter"
    [slot] = dispatcher.chain("on_send_event")
    assert (slot.plugin, slot.registered_as) == ("filter", "filter@2")
