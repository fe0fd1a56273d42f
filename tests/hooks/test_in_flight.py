"""The dispatcher tells the runs in flight on a plugin's chains, which a reload waits for,
without counting anything on the hot path; a versioned plugin name answers as the plugin
(issue 13)."""

from __future__ import annotations

import asyncio

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
    """In flight while the plugin is suspended, on the old chains after a rebuild too;
    not once it has answered."""
    gated = Gated()
    dispatcher = dispatcher_over({"gated": gated})
    assert dispatcher.in_flight("gated") == 0
    call = asyncio.create_task(dispatcher.intercept("on_send_event", make_event("x")))
    await asyncio.sleep(0)
    assert dispatcher.in_flight("gated") == 1
    assert dispatcher.in_flight("other") == 0
    dispatcher.rebuild({})  # the plugin is out of the new chains; its run goes on
    assert dispatcher.in_flight("gated") == 1
    gated.gate.set()
    assert (await call).vetoed
    assert dispatcher.in_flight("gated") == 0


async def test_a_run_in_a_chain_holding_the_plugin_counts_wherever_it_waits() -> None:
    """A run waiting on another plugin of the chain still counts for the plugin (its turn
    may come); a cancelled run no longer does."""

    class Late:
        @hookimpl(trylast=True)
        async def on_send_event(self, event):
            return None

    gated = Gated()
    dispatcher = dispatcher_over({"gated": gated, "late": Late()})
    call = asyncio.create_task(dispatcher.intercept("on_send_event", make_event("x")))
    await asyncio.sleep(0)
    assert dispatcher.in_flight("late") == 1
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert dispatcher.in_flight("late") == dispatcher.in_flight("gated") == 0


async def test_concurrent_async_observers_are_found_in_their_own_tasks() -> None:
    """Observers run in tasks of their own are each in flight until they are done."""
    first, second = Gated(), Gated()
    dispatcher = dispatcher_over({"a": first, "b": second})
    run = asyncio.create_task(dispatcher.observe("on_stored_event", make_event("x")))
    await asyncio.sleep(0.01)
    assert (dispatcher.in_flight("a"), dispatcher.in_flight("b")) == (1, 1)
    first.gate.set()
    await asyncio.sleep(0.01)
    assert (dispatcher.in_flight("a"), dispatcher.in_flight("b")) == (0, 1)
    second.gate.set()
    assert await run == ()
    assert dispatcher.in_flight("b") == 0


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
