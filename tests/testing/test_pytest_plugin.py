"""servletkit's pytest plugin: ``plugin_runner``, the event factories, the decision assertions."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest

from servletkit import Allow, Event, Modify, PluginContext, Veto, hookimpl
from servletkit.testing import (
    assert_allowed,
    assert_modified,
    assert_vetoed,
    invite,
    join,
    message,
    state,
)
from servletkit.testing.kit import PluginRunner

RunnerFactory = Any


class Moderator:
    """Vetoes configured words, shouts /shout, counts messages, guards a room."""

    @hookimpl
    async def on_send_event(self, event: Event, context: PluginContext) -> Any:
        assert context.store is not None
        await context.store.put("seen", await context.store.get("seen", 0) + 1)
        body = event.content.get("body", "")
        if any(word in body for word in context.config["words"]):
            return Veto("not that word", "ORG.EXAMPLE.WORD")
        if body.startswith("/shout "):
            return Modify({**event.content, "body": body[7:].upper()})
        if event.type == "m.room.topic":
            return Allow()
        return None

    @hookimpl
    def on_join_room(self, user_id: str, room_id: str) -> Veto | None:
        return Veto("closed") if room_id == "!closed:localhost" else None

    @hookimpl
    def on_invite(self, inviter_id: str, invitee_id: str) -> Veto | None:
        return Veto("no bots") if invitee_id.startswith("@bot") else None

    @hookimpl
    async def on_stored_event(self, event: Event, context: PluginContext) -> None:
        assert context.store is not None
        await context.store.put("stored", event.event_id)

    @hookimpl
    def on_query_user(self, user_id: str) -> bool | None:
        return True if user_id.startswith("@_bridge_") else None


def test_the_plugin_is_registered_with_pytest() -> None:
    found = {e.name: e.value for e in entry_points(group="pytest11")}
    assert found["servletkit"] == "servletkit.testing.pytest_plugin"


async def test_runs_the_hooks_through_the_dispatcher(plugin_runner: RunnerFactory) -> None:
    run = await plugin_runner(Moderator(), {"words": ["spam"]}, name="moderator")
    veto = assert_vetoed(await run.send(message("buy spam")), reason="word",
                         errcode="ORG.EXAMPLE.WORD")
    assert veto.reason == "not that word"
    assert assert_modified(await run.send(message("/shout hey"))) == {
        "msgtype": "m.text", "body": "HEY"}
    assert_allowed(await run.send(message("hello")))
    assert_allowed(await run.send(state("m.room.topic", {"topic": "cats"})), explicitly=True)
    assert_vetoed(await run.join_room("@alice:localhost", "!closed:localhost"))
    assert_allowed(await run.join_room("@alice:localhost", "!open:localhost"))
    assert_vetoed(await run.invite("@alice:localhost", "@bot:localhost", "!r:localhost"))
    await run.observe("on_stored_event", message("stored", wire="appservice"))
    assert await run.query("on_query_user", "@_bridge_bob:localhost") is True
    assert await run.query("on_query_user", "@carol:localhost") is None
    assert await run.store.get("seen") == 4
    assert (await run.store.get("stored")).startswith("$")
    assert run.context.config == {"words": ["spam"]}


async def test_each_test_has_an_empty_store(plugin_runner: RunnerFactory) -> None:
    for _ in range(2):
        run = await plugin_runner(Moderator(), {"words": []})
        await run.send(message("hi"))
        assert await run.store.get("seen") == 1


async def test_failed_assertions_print_the_event_and_the_answer(
        plugin_runner: RunnerFactory) -> None:
    run = await plugin_runner(Moderator(), {"words": ["spam"]}, name="moderator")
    with pytest.raises(AssertionError) as vetoed:
        assert_allowed(await run.send(message("buy spam", sender="@eve:localhost")))
    text = str(vetoed.value)
    assert "expected Allow() or no opinion" in text
    assert '"sender": "@eve:localhost"' in text and '"body": "buy spam"' in text
    assert "Veto(reason='not that word'" in text and "decided by moderator" in text
    with pytest.raises(AssertionError, match=r"expected a Veto(.|\n)*answer:   None"):
        assert_vetoed(await run.send(message("hello")))
    with pytest.raises(AssertionError, match="expected a Modify"):
        assert_modified(await run.send(message("hello")))


async def test_a_plugin_failure_fails_the_assertion(plugin_runner: RunnerFactory) -> None:
    class Broken:
        @hookimpl
        def on_send_event(self) -> None:
            raise RuntimeError("boom")

    run = await plugin_runner(Broken(), name="broken")
    result = await run.send(message("hi"))
    with pytest.raises(AssertionError, match=r"a plugin failed(.|\n)*broken raised"):
        assert_allowed(result)
    assert_allowed(result, allow_failures=True)


async def test_a_failing_observer_fails_observe(plugin_runner: RunnerFactory) -> None:
    class Broken:
        @hookimpl
        def on_stored_event(self) -> None:
            raise RuntimeError("boom")

    run = await plugin_runner(Broken(), name="broken")
    with pytest.raises(AssertionError, match="broken failed in on_stored_event"):
        await run.observe("on_stored_event", message("x"))


def test_event_factories() -> None:
    joined = join("@bob:localhost", "!r:localhost")
    assert (joined.type, joined.state_key, joined.sender, joined.content["membership"]) == (
        "m.room.member", "@bob:localhost", "@bob:localhost", "join")
    invited = invite("@alice:localhost", "@bob:localhost")
    assert (invited.sender, invited.state_key, invited.content["membership"]) == (
        "@alice:localhost", "@bob:localhost", "invite")
    topic = state("m.room.topic", {"topic": "t"})
    assert topic.is_state and topic.state_key == ""
    sent = message("hi", wire="appservice", format="org.matrix.custom.html")
    assert sent.stage == "after_store" and sent.content["format"] == "org.matrix.custom.html"
    assert message("a").event_id != message("a").event_id


async def test_the_runner_works_without_pytest_fixtures() -> None:
    async with PluginRunner.start(Moderator(), {"words": ["x"]}) as run:
        assert_vetoed(await run.send(message("x")))
