"""A plugin fails the same way in every dispatcher mode (issue 18).

Every mode calls plugins through one routine: raising is a ``raised`` failure,
taking longer than ``timeout_ms`` is a ``timed_out`` failure whose answer is
ignored (sync plugins too; async ones are cancelled), and only ``intercept``,
which has a decision to make, turns the failure of an ``on_error = "deny"``
plugin into a veto.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest

from servletkit import Event, Veto, hookimpl
from servletkit.container.plugins import new_plugin_manager
from servletkit.hooks.dispatcher import Dispatcher, PluginFailure, PluginPolicy

EVENT = Event.from_json({
    "event_id": "$e", "room_id": "!r:hs", "type": "m.room.message", "sender": "@a:hs",
    "content": {"body": "hello"}, "origin_server_ts": 5,
})


@attrs.frozen
class Mode:
    """One dispatcher mode: the hook it runs, a plugin's answer in it, how to run it."""

    name: str
    hook: str
    answer: Any
    run: Callable[[Dispatcher], Awaitable[tuple[tuple[PluginFailure, ...], Any]]]


async def _intercept(d: Dispatcher) -> tuple[tuple[PluginFailure, ...], Any]:
    outcome = await d.intercept("on_send_event", EVENT)
    return outcome.failures, (outcome.decided_by, outcome.decision)


async def _observe(d: Dispatcher) -> tuple[tuple[PluginFailure, ...], Any]:
    return await d.observe("on_stored_event", EVENT), None


async def _observe_each(d: Dispatcher) -> tuple[tuple[PluginFailure, ...], Any]:
    return await d.observe_each("on_stored_event", [EVENT]), None


async def _first_answer(d: Dispatcher) -> tuple[tuple[PluginFailure, ...], Any]:
    answer = await d.first_answer("on_query_user", "@u:hs")
    return (), answer  # failures are logged and counted in timings(), not returned


MODES = [
    Mode("intercept", "on_send_event", Veto("no"), _intercept),
    Mode("observe", "on_stored_event", None, _observe),
    Mode("observe_each", "on_stored_event", None, _observe_each),
    Mode("first_answer", "on_query_user", True, _first_answer),
]


def plugin(hook: str, behave: Callable[[], Any], *, is_async: bool) -> Any:
    """A plugin implementing ``hook`` (taking only ``context``) that does ``behave()``."""
    if is_async:
        async def impl(self: Any, context: Any) -> Any:
            result = behave()
            return await result if asyncio.iscoroutine(result) else result
    else:
        def impl(self: Any, context: Any) -> Any:
            return behave()
    impl.__name__ = hook
    return type("Plugin", (), {hook: hookimpl(impl)})()


def dispatcher(*plugins: tuple[str, Any, PluginPolicy]) -> Dispatcher:
    pm = new_plugin_manager()
    for name, obj, _ in plugins:
        pm.register(obj, name=name)
    d = Dispatcher(pm)
    d.rebuild({name: (attrs.evolve(policy, position=i), None)
               for i, (name, _, policy) in enumerate(plugins)})
    return d


def failures_of(d: Dispatcher, hook: str) -> dict[str, tuple[int, int]]:
    """Each plugin's (calls, failures) on ``hook``."""
    return {t.plugin: (t.calls, t.failures) for t in d.timings() if t.hook == hook}


def raises() -> Any:
    raise RuntimeError("plugin bug")


async def hangs() -> None:
    await asyncio.sleep(5)


def blocks(answer: Any) -> Callable[[], Any]:
    def block() -> Any:
        time.sleep(0.05)  # past a 10 ms budget, and no way to interrupt it
        return answer
    return block


mode_ids = [mode.name for mode in MODES]


@pytest.mark.parametrize("mode", MODES, ids=mode_ids)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_raising_plugin_is_a_raised_failure_and_the_next_one_runs(
    mode: Mode, is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """In every mode a plugin that raises is logged and counted, and the next one is called."""
    d = dispatcher(
        ("boom", plugin(mode.hook, raises, is_async=is_async), PluginPolicy()),
        ("next", plugin(mode.hook, lambda: mode.answer, is_async=False), PluginPolicy()),
    )
    failures, answer = await mode.run(d)
    assert failures_of(d, mode.hook) == {"boom": (1, 1), "next": (1, 0)}
    assert "'boom'" in caplog.text and "RuntimeError: plugin bug" in caplog.text
    if mode.name != "first_answer":
        assert [(f.plugin, f.kind) for f in failures] == [("boom", "raised")]
    if mode.name in ("intercept", "first_answer"):
        assert answer == ("next", mode.answer)


@pytest.mark.parametrize("mode", MODES, ids=mode_ids)
async def test_a_sync_plugin_over_its_budget_is_timed_out_and_its_answer_ignored(
    mode: Mode,
) -> None:
    """Without the hang guard (not started here) a sync plugin runs to its end, but past
    its budget it failed: in every mode."""
    d = dispatcher(
        ("slow", plugin(mode.hook, blocks(mode.answer), is_async=False),
         PluginPolicy(timeout_ms=10)),
        ("next", plugin(mode.hook, lambda: None, is_async=False), PluginPolicy()),
    )
    failures, answer = await mode.run(d)
    assert failures_of(d, mode.hook) == {"slow": (1, 1), "next": (1, 0)}
    if mode.name != "first_answer":
        assert [(f.plugin, f.kind) for f in failures] == [("slow", "timed_out")]
        assert "over its budget of 10 ms" in failures[0].detail
    if mode.name in ("intercept", "first_answer"):
        assert answer == (None, None)  # the late Veto / True does not count


@pytest.mark.parametrize("mode", MODES, ids=mode_ids)
async def test_an_async_plugin_over_its_budget_is_cancelled_in_every_mode(mode: Mode) -> None:
    """An async plugin still running past its budget is cancelled, and has timed out."""
    d = dispatcher(
        ("hangs", plugin(mode.hook, hangs, is_async=True), PluginPolicy(timeout_ms=20)),
        ("next", plugin(mode.hook, lambda: mode.answer, is_async=False), PluginPolicy()),
    )
    started = time.monotonic()
    failures, answer = await mode.run(d)
    assert time.monotonic() - started < 1.0
    assert failures_of(d, mode.hook) == {"hangs": (1, 1), "next": (1, 0)}
    if mode.name != "first_answer":
        assert [(f.plugin, f.kind) for f in failures] == [("hangs", "timed_out")]
    if mode.name in ("intercept", "first_answer"):
        assert answer == ("next", mode.answer)


@pytest.mark.parametrize("mode", MODES, ids=mode_ids)
async def test_on_error_deny_decides_only_where_there_is_a_decision(mode: Mode) -> None:
    """``on_error = "deny"`` vetoes in intercept; the other modes go on with the next plugin."""
    d = dispatcher(
        ("boom", plugin(mode.hook, raises, is_async=False), PluginPolicy(on_error="deny")),
        ("next", plugin(mode.hook, lambda: mode.answer, is_async=False), PluginPolicy()),
    )
    _, answer = await mode.run(d)
    calls = failures_of(d, mode.hook)
    if mode.name == "intercept":
        plugin_name, decision = answer
        assert plugin_name == "boom" and type(decision) is Veto
        assert calls == {"boom": (1, 1), "next": (0, 0)}
    else:
        assert calls == {"boom": (1, 1), "next": (1, 0)}
        if mode.name == "first_answer":
            assert answer == ("next", mode.answer)


async def test_first_answer_never_offers_none_to_accept() -> None:
    """``None`` is no answer: ``accept`` is only asked about the others."""
    offered: list[Any] = []

    def accept(answer: Any) -> bool:
        offered.append(answer)
        return answer is True

    d = dispatcher(
        ("quiet", plugin("on_query_user", lambda: None, is_async=False), PluginPolicy()),
        ("no", plugin("on_query_user", lambda: False, is_async=True), PluginPolicy()),
        ("yes", plugin("on_query_user", lambda: True, is_async=False), PluginPolicy()),
    )
    assert await d.first_answer("on_query_user", "@u:hs", accept=accept) == ("yes", True)
    assert offered == [False, True]


async def test_observers_of_several_async_plugins_still_report_a_sync_overrun() -> None:
    """With several async observers (run concurrently), a slow sync one still times out."""
    d = dispatcher(
        ("slow", plugin("on_stored_event", blocks(None), is_async=False),
         PluginPolicy(timeout_ms=10)),
        ("a1", plugin("on_stored_event", lambda: None, is_async=True), PluginPolicy()),
        ("a2", plugin("on_stored_event", hangs, is_async=True), PluginPolicy(timeout_ms=20)),
    )
    failures = await d.observe("on_stored_event", EVENT)
    assert sorted((f.plugin, f.kind) for f in failures) == [
        ("a2", "timed_out"), ("slow", "timed_out")
    ]
    assert failures_of(d, "on_stored_event") == {"slow": (1, 1), "a1": (1, 0), "a2": (1, 1)}
