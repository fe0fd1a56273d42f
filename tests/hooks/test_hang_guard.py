"""A plugin that blocks the event loop cannot stall every other request (issue 15).

With the dispatcher's hang guard on (the container starts it), a plugin still
holding the loop past its budget is interrupted, counted as timed out, and its
sync hooks run in worker threads from then on, where blocking holds up only its
own calls. These tests run the dispatcher on the main thread's loop, as
``servletkit run`` does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from servletkit import Allow, Event, hookimpl
from servletkit.container.plugins import new_plugin_manager
from servletkit.hooks.dispatcher import Dispatcher, PluginPolicy

EVENT = Event.from_json({
    "event_id": "$e", "room_id": "!r:hs", "type": "m.room.message", "sender": "@a:hs",
    "content": {"body": "hello"}, "origin_server_ts": 5,
})
HANG_S = 30.0  # far longer than any test may take: finishing at all shows the interruption


class Blocker:
    """A sync plugin that blocks in ``on_send_event`` until released (or ``HANG_S``)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: list[str] = []

    @hookimpl
    def on_send_event(self, event: Event, context: Any) -> Allow:
        self.threads.append(threading.current_thread().name)
        self.release.wait(HANG_S)
        return Allow()


class AsyncBlocker:
    """An ``async def`` plugin that blocks between awaits (``time.sleep`` in a coroutine)."""

    @hookimpl
    async def on_send_event(self, event: Event, context: Any) -> None:
        await asyncio.sleep(0)
        time.sleep(HANG_S)  # noqa: ASYNC251 - the mistake under test


class Quick:
    @hookimpl
    def on_send_event(self, event: Event, context: Any) -> Allow:
        return Allow()


@pytest.fixture
def guarded() -> Iterator[list[Dispatcher]]:
    """Dispatchers made by the test; their guards and threads are stopped afterwards."""
    made: list[Dispatcher] = []
    yield made
    for dispatcher in made:
        dispatcher.close()


def make(guarded: list[Dispatcher], *plugins: tuple[str, Any, PluginPolicy]) -> Dispatcher:
    pm = new_plugin_manager()
    for name, obj, _ in plugins:
        pm.register(obj, name=name)
    dispatcher = Dispatcher(pm)
    dispatcher.rebuild({name: (policy, None) for name, _, policy in plugins})
    dispatcher.start_guard()
    guarded.append(dispatcher)
    return dispatcher


async def longest_pause_during(call: Any) -> tuple[Any, float, float]:
    """Await ``call`` while a ticker measures how long the loop went unanswered.

    Returns the call's result, its duration and the longest gap between ticks.
    """
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    start = time.perf_counter()
    try:
        result = await call
    finally:
        duration = time.perf_counter() - start
        done.set()
        await ticker
    return result, duration, max(gaps)


async def test_a_blocking_sync_plugin_is_interrupted_then_moved_to_a_worker_thread(
    guarded: list[Dispatcher],
) -> None:
    blocker = Blocker()
    d = make(guarded, ("blocker", blocker, PluginPolicy(timeout_ms=200)),
             ("quick", Quick(), PluginPolicy(position=1)))
    try:
        first, duration, _ = await longest_pause_during(d.intercept("on_send_event", EVENT))
        assert duration < HANG_S / 3, "the blocked plugin was not interrupted"
        assert [(f.plugin, f.kind) for f in first.failures] == [("blocker", "timed_out")]
        assert "held the event loop" in first.failures[0].detail
        assert "interrupted" in first.failures[0].detail
        assert first.decided_by == "quick"  # the chain went on without it
        await asyncio.sleep(0.05)  # the move to worker threads happens on the loop

        second, duration, pause = await longest_pause_during(
            d.intercept("on_send_event", EVENT))
        assert duration < HANG_S / 3
        assert [(f.plugin, f.kind) for f in second.failures] == [("blocker", "timed_out")]
        assert "cancelled" in second.failures[0].detail  # awaited in a thread, then given up
        assert pause < 1.0, f"the loop stalled {pause:.2f} s although the plugin is threaded"
        assert blocker.threads[0] == threading.main_thread().name
        assert blocker.threads[1].startswith("servletkit-blocker")
    finally:
        blocker.release.set()


async def test_a_plugin_that_blocks_inside_async_def_is_interrupted_each_time(
    guarded: list[Dispatcher],
) -> None:
    d = make(guarded, ("async_blocker", AsyncBlocker(), PluginPolicy(timeout_ms=100)))
    for _ in range(2):
        outcome = await asyncio.wait_for(d.intercept("on_send_event", EVENT), HANG_S)
        assert [(f.plugin, f.kind) for f in outcome.failures] == [("async_blocker", "timed_out")]
        await asyncio.sleep(0.05)
    assert d.chain("on_send_event")[0].is_async  # an async def cannot move to a thread


async def test_a_threaded_plugin_runs_off_the_loop_from_the_start(
    guarded: list[Dispatcher],
) -> None:
    blocker = Blocker()
    blocker.release.set()  # answers at once
    d = make(guarded, ("blocker", blocker, PluginPolicy(threaded=True)))
    outcome = await d.intercept("on_send_event", EVENT)
    assert (outcome.decided_by, outcome.failures) == ("blocker", ())
    assert blocker.threads[0].startswith("servletkit-blocker")


async def test_a_plugin_within_its_budget_is_left_alone(guarded: list[Dispatcher]) -> None:
    blocker = Blocker()
    d = make(guarded, ("blocker", blocker, PluginPolicy(timeout_ms=2000)))
    threading.Timer(0.1, blocker.release.set).start()
    outcome = await d.intercept("on_send_event", EVENT)
    assert (outcome.decided_by, outcome.failures) == ("blocker", ())
    assert blocker.threads == [threading.main_thread().name]
    assert not d.chain("on_send_event")[0].is_async
