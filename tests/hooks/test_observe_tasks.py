"""Observation hooks: a plugin coroutine runs in one task from start to end.

httpx (through anyio) enters cancel scopes that must be left in the task that
entered them, so a plugin that suspends and resumes in another task breaks.
"""

from __future__ import annotations

import asyncio

import pytest

from servletkit import hookimpl
from servletkit.container.plugins import PluginSource, new_plugin_manager, register
from servletkit.hooks.dispatcher import Dispatcher, PluginPolicy


class TaskWitness:
    """Records the task it starts in and the task it resumes in."""

    def __init__(self) -> None:
        self.tasks: list[tuple[object, object]] = []

    @hookimpl
    async def on_stored_event(self, event):
        start = asyncio.current_task()
        await asyncio.sleep(0.001)
        self.tasks.append((start, asyncio.current_task()))


@pytest.mark.parametrize("count", [1, 2, 3])
async def test_plugin_coroutines_finish_in_the_task_they_started(count):
    """With one or several async observers, none of them changes task across a suspension."""
    pm = new_plugin_manager()
    witnesses = [TaskWitness() for _ in range(count)]
    for i, witness in enumerate(witnesses):
        register(pm, PluginSource(f"w{i}", obj=witness))
    dispatcher = Dispatcher(pm)
    dispatcher.rebuild({f"w{i}": (PluginPolicy(), None) for i in range(count)})
    assert await dispatcher.observe("on_stored_event", object()) == ()
    for witness in witnesses:
        [(started, resumed)] = witness.tasks
        assert started is resumed


async def test_single_async_observer_over_budget_times_out():
    """The only async observer, run in the caller's task, is still held to its budget."""

    class Slow:
        @hookimpl
        async def on_stored_event(self, event):
            await asyncio.sleep(5)

    pm = new_plugin_manager()
    register(pm, PluginSource("slow", obj=Slow()))
    dispatcher = Dispatcher(pm)
    dispatcher.rebuild({"slow": (PluginPolicy(timeout_ms=20), None)})
    [failure] = await dispatcher.observe("on_stored_event", object())
    assert (failure.plugin, failure.kind) == ("slow", "timed_out")


async def test_observe_each_keeps_order_and_reports_failures():
    """observe_each runs the items in order, through sync and async observers alike."""
    seen = []

    class Sync:
        @hookimpl
        def on_stored_event(self, event):
            if event == "bad":
                raise ValueError(event)
            seen.append(("sync", event))

    class Async:
        @hookimpl
        async def on_stored_event(self, event):
            await asyncio.sleep(0)
            seen.append(("async", event))

    for plugins in ({"s": Sync()}, {"s": Sync(), "a": Async()}):
        seen.clear()
        pm = new_plugin_manager()
        for name, obj in plugins.items():
            register(pm, PluginSource(name, obj=obj))
        dispatcher = Dispatcher(pm)
        dispatcher.rebuild({name: (PluginPolicy(), None) for name in plugins})
        [failure] = await dispatcher.observe_each("on_stored_event", ["one", "bad", "two"])
        assert (failure.plugin, failure.kind) == ("s", "raised")
        assert [e for kind, e in seen if kind == "sync"] == ["one", "two"]
        [sync_timing] = [t for t in dispatcher.timings() if t.plugin == "s"]
        assert (sync_timing.calls, sync_timing.failures) == (3, 1)
        if "a" in plugins:
            assert [e for kind, e in seen if kind == "async"] == ["one", "bad", "two"]
