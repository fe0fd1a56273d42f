"""Policy lists: parsing, the index, and bans through the real dispatcher."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from servletkit_policy_server import PolicyServer
from servletkit_policy_server.policy_lists import PolicyIndex, parse_rule

from servletkit.container.runtime import Container
from servletkit.testing import make_event, running_container

LIST = "!banlist:localhost"


def rule_event(kind: str, entity: str, *, key: str | None = None,
               prefix: str = "m.policy.rule.", recommendation: str = "m.ban",
               reason: str = "spam") -> dict[str, Any]:
    """A policy rule state event as the client API returns it."""
    return {"type": prefix + kind, "state_key": key or f"rule:{entity}", "room_id": LIST,
            "sender": "@mod:localhost", "event_id": f"$r{entity}", "origin_server_ts": 0,
            "content": {"entity": entity, "recommendation": recommendation, "reason": reason}}


class FakeHomeserver:
    """Answers join (aliases resolve to LIST) and get_room_state from a list of events."""

    def __init__(self, state: list[dict[str, Any]]) -> None:
        self.state = state
        self.joined: list[str] = []

    async def join(self, room: str) -> str:
        self.joined.append(room)
        return LIST

    async def get_room_state(self, room_id: str) -> list[dict[str, Any]]:
        assert room_id == LIST
        return list(self.state)


@asynccontextmanager
async def following(state: list[dict[str, Any]], **table: Any,
                    ) -> AsyncIterator[tuple[Container, FakeHomeserver]]:
    """A container whose plugin follows ``#bans:localhost`` holding ``state``."""
    homeserver = FakeHomeserver(state)
    config = {"plugins": {"policy_server": {"policy_lists": ["#bans:localhost"], **table}}}
    async with running_container({"policy_server": PolicyServer(homeserver=homeserver)},
                                 config) as container:
        yield container, homeserver


def test_parse_accepts_the_three_type_families_and_only_bans() -> None:
    """m.policy.rule.*, m.room.rule.* and org.matrix.mjolnir.rule.* parse; other advice not."""
    for prefix in ("m.policy.rule.", "m.room.rule.", "org.matrix.mjolnir.rule."):
        rule = parse_rule(LIST, prefix + "server", "k", {"entity": "evil.org",
                                                         "recommendation": "m.ban"})
        assert rule is not None and rule.kind == "server"
    assert parse_rule(LIST, "m.policy.rule.user", "k",
                      {"entity": "@a:x", "recommendation": "org.matrix.mjolnir.ban"})
    assert parse_rule(LIST, "m.policy.rule.user", "k",
                      {"entity": "@a:x", "recommendation": "m.takedown.maybe"}) is None
    assert parse_rule(LIST, "m.policy.rule.user", "k", {}) is None
    assert parse_rule(LIST, "m.policy.rule.group", "k",
                      {"entity": "x", "recommendation": "m.ban"}) is None


def test_index_matches_exact_and_glob_entries_and_forgets_removed_ones() -> None:
    """Globs with * and ? match whole entities; a rule replaced by empty content is gone."""
    index = PolicyIndex()
    for event in (rule_event("user", "@exact:x"), rule_event("user", "@spam*:*"),
                  rule_event("user", "*:evil.org"), rule_event("user", "@b?t:y"),
                  rule_event("server", "*.bad.example"), rule_event("room", "!r:x")):
        assert index.apply_state(LIST, event)
    assert len(index) == 6
    assert index.match("user", "@exact:x") is not None
    assert index.match("user", "@exact:xy") is None
    assert index.match("user", "@spammer:anywhere") is not None
    assert index.match("user", "@someone:evil.org") is not None
    assert index.match("user", "@someone:evil.org.au") is None
    assert index.match("user", "@bot:y") is not None
    assert index.match("user", "@boot:y") is None
    assert index.banned_user("@who:a.bad.example").entity == "*.bad.example"  # type: ignore[union-attr]
    assert index.match("room", "!r:x") is not None
    assert index.match("user", "!r:x") is None
    removed = {**rule_event("user", "@spam*:*"), "content": {}}
    index.apply_state(LIST, removed)
    assert index.match("user", "@spammer:anywhere") is None
    assert len(index) == 5
    assert not index.apply_state(LIST, {"type": "m.room.name", "state_key": "", "content": {}})


async def test_banned_user_and_server_are_refused_on_messages_and_joins() -> None:
    """Rules read from the list room at init refuse messages, joins and invites."""
    state = [rule_event("user", "@troll:localhost", reason="trolling"),
             rule_event("server", "evil.org", prefix="org.matrix.mjolnir.rule."),
             rule_event("room", "!cursed:localhost", prefix="m.room.rule."),
             {"type": "m.room.create", "state_key": "", "content": {}}]
    async with following(state) as (container, homeserver):
        assert homeserver.joined == ["#bans:localhost"]
        intercept = container.dispatcher.intercept
        outcome = await intercept("on_send_event", make_event("hi", sender="@troll:localhost"))
        assert outcome.vetoed
        assert outcome.decision.reason == (  # type: ignore[union-attr]
            "policy_list: @troll:localhost is banned by policy list #bans:localhost "
            "(user rule '@troll:localhost': trolling)")
        assert (await intercept("on_send_event", make_event("hi", sender="@x:evil.org"))).vetoed
        assert not (await intercept("on_send_event", make_event("hi"))).vetoed
        assert (await intercept("on_join_room", "@troll:localhost", "!room:localhost")).vetoed
        assert (await intercept("on_join_room", "@x:evil.org", "!room:localhost")).vetoed
        assert (await intercept("on_join_room", "@alice:localhost", "!cursed:localhost")).vetoed
        assert not (await intercept("on_join_room", "@alice:localhost", "!room:localhost")).vetoed
        assert (await intercept("on_invite", "@alice:localhost", "@troll:localhost",
                                "!room:localhost")).vetoed


async def test_rule_events_stored_in_the_list_room_apply_at_once() -> None:
    """A new ban, then its removal, through on_stored_event; other rooms' rules are ignored."""
    async with following([]) as (container, _):
        dispatcher = container.dispatcher
        message = make_event("hi", sender="@new:localhost")
        assert not (await dispatcher.intercept("on_send_event", message)).vetoed
        ban = rule_event("user", "@new:*")
        elsewhere = make_event(type=ban["type"], content=ban["content"], state_key="x",
                               room_id="!other:localhost", wire="appservice")
        await dispatcher.observe("on_stored_event", elsewhere)
        assert not (await dispatcher.intercept("on_send_event", message)).vetoed
        await dispatcher.observe("on_stored_event", make_event(
            type=ban["type"], content=ban["content"], state_key="k", room_id=LIST,
            wire="appservice"))
        assert (await dispatcher.intercept("on_send_event", message)).vetoed
        assert not (await dispatcher.intercept(
            "on_send_event", make_event("edit", sender="@new:localhost", room_id=LIST))).vetoed
        await dispatcher.observe("on_stored_event", make_event(
            type=ban["type"], content={}, state_key="k", room_id=LIST, wire="appservice"))
        assert not (await dispatcher.intercept("on_send_event", message)).vetoed


async def test_a_redaction_in_the_list_room_rereads_its_state() -> None:
    """A redacted rule is gone once the list's state no longer holds it."""
    async with following([rule_event("user", "@troll:localhost")]) as (container, homeserver):
        dispatcher = container.dispatcher
        message = make_event("hi", sender="@troll:localhost")
        assert (await dispatcher.intercept("on_send_event", message)).vetoed
        homeserver.state = []
        await dispatcher.observe("on_stored_event", make_event(
            type="m.room.redaction", content={}, room_id=LIST, redacts="$x", wire="appservice"))
        assert not (await dispatcher.intercept("on_send_event", message)).vetoed


async def test_policy_list_dry_run_logs_instead(caplog: pytest.LogCaptureFixture) -> None:
    """dry_run_rules = ["policy_list"]: the banned user gets through, the log names the rule."""
    caplog.set_level(logging.INFO)
    async with following([rule_event("user", "@troll:localhost")],
                         dry_run_rules=["policy_list"]) as (container, _):
        outcome = await container.dispatcher.intercept(
            "on_send_event", make_event("hi", sender="@troll:localhost"))
        assert not outcome.vetoed
    assert "would refuse m.room.message" in caplog.text
    assert "rule policy_list: @troll:localhost is banned" in caplog.text


class CommandHomeserver(FakeHomeserver):
    """Also the management room ``!mgmt:localhost``: records what the bot sends."""

    user_id = "@servletkit:localhost"

    def __init__(self, state: list[dict[str, Any]]) -> None:
        super().__init__(state)
        self.said: list[str] = []
        self.states: list[tuple[str, str, str, dict[str, Any]]] = []

    async def join(self, room: str) -> str:
        return room if room.startswith("!") else await super().join(room)

    async def send_message(self, room_id: str, body: str) -> str:
        assert room_id == "!mgmt:localhost"
        self.said.append(body)
        return "$reply"

    async def send_state(self, room_id: str, event_type: str, state_key: str,
                         content: dict[str, Any]) -> str:
        self.states.append((room_id, event_type, state_key, content))
        return "$state"


async def test_management_room_commands() -> None:
    """!policy status/rules/dry-run/ban/unban/audit from a member; the bot's own and other
    rooms' messages are no commands; the toggle acts on the next decision."""
    homeserver = CommandHomeserver([rule_event("user", "@troll:evil.org")])
    table = {"policy_lists": ["#bans:localhost"], "management_room": "!mgmt:localhost",
             "blocked_words": ["spam"]}
    async with running_container({"policy_server": PolicyServer(homeserver=homeserver)},
                                 {"plugins": {"policy_server": table}}) as container:
        dispatcher = container.dispatcher

        async def say(body: str, sender: str = "@mod:localhost",
                      room_id: str = "!mgmt:localhost") -> str | None:
            before = len(homeserver.said)
            await dispatcher.observe("on_stored_event", make_event(body, sender=sender,
                                                                   room_id=room_id))
            return homeserver.said[-1] if len(homeserver.said) > before else None

        assert await say("!policy status") == (
            "2 rules, 1 policy-list bans from 1 lists; dry run off; 0 decisions kept")
        assert await say("!policy rules") == "rules: blocked_words, policy_list"
        assert (await dispatcher.intercept("on_send_event", make_event("spam"))).vetoed
        assert await say("!policy dry-run on") == "dry run on"
        assert not (await dispatcher.intercept("on_send_event", make_event("spam"))).vetoed
        audit = (await say("!policy audit 2")).splitlines()
        assert audit[0].startswith("refused (blocked_words): m.room.message ")
        assert audit[1].startswith("would refuse (blocked_words): m.room.message ")
        assert await say("!policy ban @spam*:x.org spammer") == (
            "banned @spam*:x.org in #bans:localhost")
        assert homeserver.states[-1] == (LIST, "m.policy.rule.user", "rule:@spam*:x.org", {
            "entity": "@spam*:x.org", "recommendation": "m.ban", "reason": "spammer"})
        assert await say("!policy unban @troll:evil.org") == (
            "unbanned @troll:evil.org (1 rules removed)")
        assert homeserver.states[-1] == (LIST, "m.policy.rule.user", "rule:@troll:evil.org", {})
        assert (await say("!policy dance")).startswith("commands: !policy status")
        assert await say("!policy protect !room:localhost") == (
            "no policy wire: add a [policy] section to the container's config to protect rooms")
        assert await say("!policy status", sender=homeserver.user_id) is None
        assert await say("!policy status", room_id="!elsewhere:localhost") is None


async def test_policy_rules_shows_each_community() -> None:
    """!policy rules: the global rules, then each community's rooms, keys and rules."""
    homeserver = CommandHomeserver([])
    table = {"management_room": "!mgmt:localhost", "blocked_words": ["spam"],
             "dry_run_rules": ["policy_list"], "communities": [
                 {"rooms": ["!a:localhost", "!b:localhost"], "max_mentions": 2},
                 {"rooms": ["!c:localhost"]}]}
    async with running_container({"policy_server": PolicyServer(homeserver=homeserver)},
                                 {"plugins": {"policy_server": table}}) as container:
        await container.dispatcher.observe("on_stored_event", make_event(
            "!policy rules", sender="@mod:localhost", room_id="!mgmt:localhost"))
    assert homeserver.said == [
        "rules: blocked_words, policy_list (dry run)"
        "; community !a:localhost, !b:localhost (sets max_mentions): "
        "blocked_words, max_mentions, policy_list (dry run)"
        "; community !c:localhost (sets nothing): blocked_words, policy_list (dry run)"]
