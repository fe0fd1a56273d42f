"""The dispatcher's rules: order, pipelining, short-circuit, budgets, failure policies."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from servletkit import Allow, Ephemeral, Event, Modify, Veto, hookimpl
from servletkit.container.plugins import new_plugin_manager
from servletkit.hooks.context import PluginContext
from servletkit.hooks.dispatcher import FAILURE_RECORD_ATTRIBUTE, Dispatcher, PluginPolicy

EVENT = Event.from_json({
    "event_id": "$e", "room_id": "!r:hs", "type": "m.room.message", "sender": "@a:hs",
    "content": {"body": "hello"}, "origin_server_ts": 5,
})


def dispatcher_for(*plugins: tuple[str, Any, PluginPolicy]) -> Dispatcher:
    """A dispatcher over ``(name, plugin object, policy)``, registered in that order."""
    pm = new_plugin_manager()
    table = {}
    for name, obj, policy in plugins:
        pm.register(obj, name=name)
        table[name] = (policy, PluginContext.create(name, {"name": name}))
    dispatcher = Dispatcher(pm)
    dispatcher.rebuild(table)
    return dispatcher


class Recorder:
    """Answers ``answer``, recording the body it saw in ``seen``."""

    def __init__(self, seen: list[str], label: str, answer: Any = None):
        self.seen, self.label, self.answer = seen, label, answer

    @hookimpl
    def on_send_event(self, event: Event, context: PluginContext) -> Any:
        self.seen.append(f"{self.label}:{event.content['body']}")
        return self.answer


class AsyncRecorder:
    """Like :class:`Recorder`, but ``async def`` and really suspending first."""

    def __init__(self, seen: list[str], label: str, answer: Any = None):
        self.seen, self.label, self.answer = seen, label, answer

    @hookimpl
    async def on_send_event(self, event: Event, context: PluginContext) -> Any:
        await asyncio.sleep(0)  # really suspends
        self.seen.append(f"{self.label}:{event.content['body']}")
        return self.answer


def policy(position: int = 0, **kwargs: Any) -> PluginPolicy:
    return PluginPolicy(position=position, **kwargs)


class TestOrder:
    async def test_config_order_wins_over_registration(self) -> None:
        """Plugins run by their ``order``, whatever order they were registered in."""
        seen: list[str] = []
        d = dispatcher_for(
            ("late", Recorder(seen, "late"), policy(0, order=20)),
            ("early", Recorder(seen, "early"), policy(1, order=10)),
        )
        await d.intercept("on_send_event", EVENT)
        assert seen == ["early:hello", "late:hello"]

    async def test_tryfirst_and_trylast_break_order_ties(self) -> None:
        """Within one ``order``, tryfirst runs before normal before trylast."""
        seen: list[str] = []

        class First:
            @hookimpl(tryfirst=True)
            def on_send_event(self, event: Event) -> None:
                seen.append("first")

        class Last:
            @hookimpl(trylast=True)
            def on_send_event(self, event: Event) -> None:
                seen.append("last")

        d = dispatcher_for(
            ("last", Last(), policy(0)),
            ("normal", Recorder(seen, "normal"), policy(1)),
            ("first", First(), policy(2)),
        )
        await d.intercept("on_send_event", EVENT)
        assert seen == ["first", "normal:hello", "last"]

    async def test_config_position_breaks_remaining_ties(self) -> None:
        """Same order and no markers: the plugin whose table comes first in the file runs first."""
        seen: list[str] = []
        d = dispatcher_for(
            ("b", Recorder(seen, "b"), policy(1)),
            ("a", Recorder(seen, "a"), policy(0)),
        )
        await d.intercept("on_send_event", EVENT)
        assert seen == ["a:hello", "b:hello"]


class TestDecisions:
    async def test_no_plugins_means_no_opinion(self) -> None:
        outcome = await dispatcher_for().intercept("on_send_event", EVENT)
        assert outcome.decision is None and outcome.decided_by is None

    async def test_modify_is_pipelined(self) -> None:
        """Each plugin sees the event as modified by the ones before it."""
        seen: list[str] = []
        d = dispatcher_for(
            ("upper", Recorder(seen, "upper", Modify(content={"body": "HELLO"})), policy(0)),
            ("exclaim", Recorder(seen, "exclaim", Modify(content={"body": "HELLO!"})), policy(1)),
            ("watch", Recorder(seen, "watch"), policy(2)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert seen == ["upper:hello", "exclaim:HELLO", "watch:HELLO!"]
        assert outcome.decision == Modify(content={"body": "HELLO!"})
        assert outcome.decided_by == "exclaim"
        assert outcome.event.content == {"body": "HELLO!"}
        assert outcome.event.event_id == EVENT.event_id

    async def test_a_wire_that_cannot_modify_makes_modify_a_failure(self) -> None:
        """With modify=False (the policy wire) a Modify is a bad answer, by on_error."""
        seen: list[str] = []
        d = dispatcher_for(
            ("upper", Recorder(seen, "upper", Modify(content={"body": "HELLO"})), policy(0)),
            ("watch", Recorder(seen, "watch"), policy(1)),
        )
        outcome = await d.intercept("on_send_event", EVENT, modify=False)
        assert seen == ["upper:hello", "watch:hello"]  # nobody saw a modified event
        assert outcome.decision is None and outcome.event is None
        [failure] = outcome.failures
        assert (failure.plugin, failure.kind) == ("upper", "bad_answer")
        assert "can only allow or refuse" in failure.detail
        strict = dispatcher_for(
            ("upper", Recorder([], "upper", Modify(content={})), policy(0, on_error="deny")))
        outcome = await strict.intercept("on_send_event", EVENT, modify=False)
        assert outcome.vetoed and outcome.decided_by == "upper"

    async def test_first_veto_ends_the_chain(self) -> None:
        seen: list[str] = []
        d = dispatcher_for(
            ("allow", Recorder(seen, "allow", Allow()), policy(0)),
            ("veto", Recorder(seen, "veto", Veto("nope", "M_TOO_LARGE")), policy(1)),
            ("after", Recorder(seen, "after", Veto("never")), policy(2)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert seen == ["allow:hello", "veto:hello"]
        assert outcome.vetoed
        assert outcome.decision == Veto("nope", "M_TOO_LARGE")
        assert outcome.decided_by == "veto"
        calls = {(t.plugin, t.hook): t.calls for t in d.timings()}
        assert calls[("after", "on_send_event")] == 0
        assert calls[("veto", "on_send_event")] == 1

    async def test_veto_after_modify_reports_the_modified_event(self) -> None:
        d = dispatcher_for(
            ("mod", Recorder([], "mod", Modify(content={"body": "x"})), policy(0)),
            ("veto", Recorder([], "veto", Veto("no")), policy(1)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert outcome.vetoed and outcome.event.content == {"body": "x"}

    async def test_allow_names_the_first_allowing_plugin(self) -> None:
        d = dispatcher_for(
            ("quiet", Recorder([], "quiet"), policy(0)),
            ("yes1", Recorder([], "yes1", Allow()), policy(1)),
            ("yes2", Recorder([], "yes2", Allow()), policy(2)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert outcome.decision == Allow() and outcome.decided_by == "yes1"
        assert outcome.event is None

    async def test_sync_and_async_plugins_mix(self) -> None:
        """Async implementations that really suspend are awaited in their turn."""
        seen: list[str] = []
        d = dispatcher_for(
            ("a", AsyncRecorder(seen, "a", Modify(content={"body": "from-a"})), policy(0)),
            ("b", Recorder(seen, "b"), policy(1)),
            ("c", AsyncRecorder(seen, "c", Veto("c says no")), policy(2)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert seen == ["a:hello", "b:from-a", "c:from-a"]
        assert outcome.decision == Veto("c says no") and outcome.decided_by == "c"

    async def test_implementation_may_take_fewer_arguments(self) -> None:
        """pluggy lets a hook implementation declare only the arguments it uses."""

        class JoinGuard:
            @hookimpl
            def on_join_room(self, room_id: str) -> Veto | None:
                return Veto("closed room") if room_id == "!closed:hs" else None

        d = dispatcher_for(("guard", JoinGuard(), policy()))
        closed = await d.intercept("on_join_room", "@u:hs", "!closed:hs")
        open_ = await d.intercept("on_join_room", "@u:hs", "!open:hs")
        assert closed.decision == Veto("closed room")
        assert open_.decision is None


class Slow:
    def __init__(self, seconds: float, *, blocking: bool = False):
        self.seconds, self.blocking, self.cancelled = seconds, blocking, False

    @hookimpl
    async def on_send_event(self, event: Event) -> Veto:
        if self.blocking:
            time.sleep(self.seconds)  # noqa: ASYNC251 - the point: a plugin that blocks
            return Veto("late answer")
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return Veto("late answer")


class Boom:
    @hookimpl
    def on_send_event(self, event: Event) -> None:
        raise RuntimeError("plugin bug")


class TestFailures:
    async def test_async_overrun_is_cancelled_and_allowed(self) -> None:
        """An async plugin past its budget is cancelled; on_error=allow means no opinion."""
        slow = Slow(5.0)
        seen: list[str] = []
        d = dispatcher_for(
            ("slow", slow, policy(0, timeout_ms=50, on_error="allow")),
            ("next", Recorder(seen, "next", Allow()), policy(1)),
        )
        started = time.monotonic()
        outcome = await d.intercept("on_send_event", EVENT)
        assert time.monotonic() - started < 2.0  # cancelled, not waited out
        assert slow.cancelled
        assert outcome.decision == Allow() and outcome.decided_by == "next"
        assert [(f.plugin, f.kind) for f in outcome.failures] == [("slow", "timed_out")]
        assert seen == ["next:hello"]

    async def test_async_overrun_with_deny_vetoes(self) -> None:
        d = dispatcher_for(
            ("slow", Slow(5.0), policy(0, timeout_ms=50, on_error="deny")),
            ("next", Recorder([], "next", Allow()), policy(1)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert outcome.vetoed and outcome.decided_by == "slow"
        assert "slow" in outcome.decision.reason
        assert outcome.failures[0].kind == "timed_out"

    async def test_sync_overrun_discards_the_answer(self) -> None:
        """A plugin that blocks past its budget cannot be interrupted; its answer is dropped."""
        d = dispatcher_for(("blocker", Slow(0.1, blocking=True), policy(timeout_ms=20)))
        outcome = await d.intercept("on_send_event", EVENT)
        assert outcome.decision is None
        assert outcome.failures[0].kind == "timed_out"

    async def test_raising_plugin_with_allow_is_skipped(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        seen: list[str] = []
        d = dispatcher_for(
            ("boom", Boom(), policy(0, on_error="allow")),
            ("next", Recorder(seen, "next"), policy(1)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert seen == ["next:hello"]
        assert outcome.decision is None
        assert outcome.failures[0].plugin == "boom" and outcome.failures[0].kind == "raised"
        assert "plugin bug" in outcome.failures[0].detail
        assert "'boom'" in caplog.text and "RuntimeError: plugin bug" in caplog.text

    async def test_raising_plugin_with_deny_vetoes(self) -> None:
        seen: list[str] = []
        d = dispatcher_for(
            ("boom", Boom(), policy(0, on_error="deny")),
            ("next", Recorder(seen, "next"), policy(1)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert outcome.vetoed and outcome.decided_by == "boom"
        assert outcome.decision.errcode == "M_FORBIDDEN"
        assert "plugin bug" not in outcome.decision.reason  # internals stay in the log
        assert seen == []

    async def test_a_broken_plugin_does_not_break_the_others(self) -> None:
        seen: list[str] = []
        d = dispatcher_for(
            ("a", Recorder(seen, "a", Modify(content={"body": "A"})), policy(0)),
            ("boom", Boom(), policy(1)),
            ("c", Recorder(seen, "c", Veto("c vetoes")), policy(2)),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        assert seen == ["a:hello", "c:A"]
        assert outcome.decision == Veto("c vetoes")
        timings = {t.plugin: t for t in d.timings()}
        assert timings["boom"].failures == 1 and timings["a"].failures == 0

    @pytest.mark.parametrize(
        ("answer", "expected"),
        [(True, "expected Allow()"), ({"body": "x"}, "expected Allow()"), ("no", "expected")],
    )
    async def test_an_answer_that_is_not_a_decision_is_a_failure(
        self, answer: Any, expected: str
    ) -> None:
        d = dispatcher_for(("odd", Recorder([], "odd", answer), policy(on_error="deny")))
        outcome = await d.intercept("on_send_event", EVENT)
        assert outcome.vetoed
        assert outcome.failures[0].kind == "bad_answer"
        assert expected in outcome.failures[0].detail

    async def test_modify_where_there_is_no_event_is_a_failure(self) -> None:
        class ModifyJoin:
            @hookimpl
            def on_join_room(self, user_id: str, room_id: str) -> Modify:
                return Modify(content={})

        d = dispatcher_for(("m", ModifyJoin(), policy()))
        outcome = await d.intercept("on_join_room", "@u:hs", "!r:hs")
        assert outcome.decision is None
        assert "no event to modify" in outcome.failures[0].detail

    async def test_each_failure_is_logged_with_its_description(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every failure, whatever the policy, is one error record carrying its PluginFailure
        (what servletkit dev shows); a raised one also has the traceback."""
        d = dispatcher_for(
            ("boom", Boom(), policy(0, on_error="allow")),
            ("odd", Recorder([], "odd", True), policy(1, on_error="allow")),
            ("slow", Slow(0.1, blocking=True), policy(2, timeout_ms=20, on_error="deny")),
        )
        outcome = await d.intercept("on_send_event", EVENT)
        records = [r for r in caplog.records if hasattr(r, FAILURE_RECORD_ATTRIBUTE)]
        assert [getattr(r, FAILURE_RECORD_ATTRIBUTE) for r in records] == list(outcome.failures)
        assert [(f.plugin, f.kind) for f in outcome.failures] == [
            ("boom", "raised"), ("odd", "bad_answer"), ("slow", "timed_out")]
        assert outcome.failures[0].detail == "RuntimeError: plugin bug"
        assert [r.exc_info is not None for r in records] == [True, False, False]
        assert all(r.levelname == "ERROR" for r in records)

    async def test_outside_cancellation_is_not_swallowed(self) -> None:
        """Cancelling the caller cancels the chain; the dispatcher only absorbs its own."""
        d = dispatcher_for(("slow", Slow(5.0), policy(timeout_ms=10_000)))
        task = asyncio.ensure_future(d.intercept("on_send_event", EVENT))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def test_the_deadline_ends_with_the_chain(self) -> None:
        """After the chain, the caller's own waiting is never cancelled by a plugin budget."""
        d = dispatcher_for(("quick", AsyncRecorder([], "quick"), policy(timeout_ms=20)))
        await d.intercept("on_send_event", EVENT)
        await asyncio.sleep(0.1)  # well past the plugin's budget: must not be cancelled
        outcome = await d.intercept("on_send_event", EVENT)
        assert outcome.failures == ()


class TestObservation:
    async def test_observers_run_concurrently(self) -> None:
        """Two observers that each wait for the other can only finish if run concurrently."""
        first, second = asyncio.Event(), asyncio.Event()

        class Ping:
            @hookimpl
            async def on_stored_event(self, event: Event) -> None:
                first.set()
                await asyncio.wait_for(second.wait(), 2)

        class Pong:
            @hookimpl
            async def on_stored_event(self, event: Event) -> None:
                second.set()
                await asyncio.wait_for(first.wait(), 2)

        d = dispatcher_for(("ping", Ping(), policy(0)), ("pong", Pong(), policy(1)))
        assert await d.observe("on_stored_event", EVENT) == ()

    async def test_observer_failures_are_reported_not_raised(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        got: list[str] = []

        class Broken:
            @hookimpl
            def on_stored_event(self, event: Event) -> None:
                raise ValueError("observer bug")

        class Hangs:
            @hookimpl
            async def on_stored_event(self, event: Event) -> None:
                await asyncio.sleep(5)

        class Fine:
            @hookimpl
            async def on_stored_event(self, event: Event) -> None:
                got.append(event.event_id)

        d = dispatcher_for(
            ("broken", Broken(), policy(0)),
            ("hangs", Hangs(), policy(1, timeout_ms=30)),
            ("fine", Fine(), policy(2)),
        )
        failures = await d.observe("on_stored_event", EVENT)
        assert sorted((f.plugin, f.kind) for f in failures) == [
            ("broken", "raised"), ("hangs", "timed_out")
        ]
        assert got == ["$e"]
        logged = [getattr(r, FAILURE_RECORD_ATTRIBUTE, None) for r in caplog.records]
        assert set(failures) == {f for f in logged if f is not None}


class EveryHook:
    """Implements every interception and observation hook, recording what it was given."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, ...]] = []

    @hookimpl
    def on_join_room(self, user_id: str, room_id: str, context: PluginContext) -> Veto:
        self.got.append(("on_join_room", user_id, room_id, context.name))
        return Veto("join")

    @hookimpl
    async def on_invite(
        self, inviter_id: str, invitee_id: str, room_id: str, context: PluginContext
    ) -> Veto:
        self.got.append(("on_invite", inviter_id, invitee_id, room_id, context.name))
        return Veto("invite")

    @hookimpl
    def on_create_room(self, user_id: str, request: dict[str, Any], context: PluginContext) -> Veto:
        self.got.append(("on_create_room", user_id, request, context.name))
        return Veto("create")

    @hookimpl
    def on_connect_event_stream(
        self, user_id: str, device_id: str | None, context: PluginContext
    ) -> Veto:
        self.got.append(("on_connect_event_stream", user_id, device_id, context.name))
        return Veto("connect")

    @hookimpl
    async def on_ephemeral(self, data: Ephemeral, context: PluginContext) -> None:
        self.got.append(("on_ephemeral", data.type, context.name))


@pytest.mark.parametrize(
    ("hook", "args"),
    [
        ("on_join_room", ("@u:hs", "!r:hs")),
        ("on_invite", ("@u:hs", "@v:hs", "!r:hs")),
        ("on_create_room", ("@u:hs", {"preset": "private_chat"})),
        ("on_connect_event_stream", ("@u:hs", "DEVICE")),
    ],
)
async def test_each_interception_hook_gets_its_arguments_in_place(
    hook: str, args: tuple[Any, ...]
) -> None:
    plugin = EveryHook()
    outcome = await dispatcher_for(("every", plugin, policy())).intercept(hook, *args)
    assert plugin.got == [(hook, *args, "every")]
    assert outcome.vetoed and outcome.event is None


async def test_ephemeral_data_reaches_observers() -> None:
    plugin = EveryHook()
    data = Ephemeral.from_json({"type": "m.typing", "room_id": "!r:hs", "content": {}})
    assert await dispatcher_for(("every", plugin, policy())).observe("on_ephemeral", data) == ()
    assert plugin.got == [("on_ephemeral", "m.typing", "every")]


class TestDecisionValues:
    @pytest.mark.parametrize(
        "build",
        [lambda: Veto(3), lambda: Veto("no", errcode="forbidden"), lambda: Veto("no", None),
         lambda: Modify(content="text"), lambda: Modify(content=None)],
    )
    def test_malformed_decisions_fail_where_the_plugin_builds_them(self, build: Any) -> None:
        """A decision that a wire could not send never exists: the plugin's own line raises."""
        with pytest.raises((TypeError, ValueError)):
            build()

    def test_namespaced_errcodes_are_accepted(self) -> None:
        assert Veto("no", "ORG.EXAMPLE.NOT_HERE").errcode == "ORG.EXAMPLE.NOT_HERE"

    async def test_a_plugin_building_a_bad_veto_is_a_raised_failure(self) -> None:
        class BadVeto:
            @hookimpl
            def on_send_event(self, event: Event) -> Veto:
                return Veto(ValueError("not a reason"))  # type: ignore[arg-type]

        d = dispatcher_for(("bad", BadVeto(), policy(on_error="allow")))
        outcome = await d.intercept("on_send_event", EVENT)
        assert outcome.decision is None
        assert outcome.failures[0].kind == "raised" and "reason" in outcome.failures[0].detail
