"""Content rules and dry run, through the real dispatcher."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from servletkit_policy_server import PolicyServer

from servletkit import Event
from servletkit.container.runtime import Container
from servletkit.hooks.dispatcher import Outcome
from servletkit.store import PluginStore
from servletkit.testing import make_event, running_container


@asynccontextmanager
async def policy(table: dict[str, Any], plugin: PolicyServer | None = None,
                 ) -> AsyncIterator[Container]:
    """A container running the plugin with ``table`` as its config."""
    plugin = plugin or PolicyServer()
    async with running_container({"policy_server": plugin},
                                 {"plugins": {"policy_server": table}}) as container:
        yield container


def send(container: Container, *args: Any, **kwargs: Any) -> Any:
    """Dispatch ``on_send_event`` for ``make_event(*args, **kwargs)``."""
    return container.dispatcher.intercept("on_send_event", make_event(*args, **kwargs))


def reason(outcome: Outcome) -> str:
    """The veto's reason."""
    assert outcome.vetoed
    return outcome.decision.reason  # type: ignore[union-attr]


async def test_blocked_words_are_whole_words_and_patterns_any_case() -> None:
    """A word matches as a word; a regex anywhere; the reason names the rule."""
    async with policy({"blocked_words": ["spam"], "blocked_patterns": [r"buy\s+now"]}) as c:
        assert reason(await send(c, "great SPAM here")).startswith("blocked_words: ")
        assert "'Buy  now'" in reason(await send(c, "Buy  now!"))
        assert not (await send(c, "spamming is a different word")).vetoed
        assert not (await send(c, "hello")).vetoed
        assert not (await send(c, type="m.room.topic", content={"topic": "spam"},
                               state_key="")).vetoed


async def test_max_mentions_counts_distinct_users_in_text_and_m_mentions() -> None:
    """Three distinct users over a limit of two is refused; repeats count once."""
    async with policy({"max_mentions": 2}) as c:
        content = {"msgtype": "m.text", "body": "@a:x @b:x @a:x",
                   "m.mentions": {"user_ids": ["@c:x"]}}
        assert reason(await send(c, content=content)) == (
            "max_mentions: the message mentions 3 users (at most 2)")
        assert not (await send(c, "@a:x and @b:x and @a:x")).vetoed


async def test_flood_per_sender_and_per_room() -> None:
    """The third message within the window is refused, other senders are not; time heals."""
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    table = {"flood_messages": 2, "flood_seconds": 10, "flood_room_messages": 4}
    async with policy(table, PolicyServer(clock=clock)) as c:
        assert not (await send(c, "1")).vetoed
        assert not (await send(c, "2")).vetoed
        assert reason(await send(c, "3")).startswith("flood: @alice:localhost sent 3 messages")
        assert not (await send(c, "1", sender="@bob:localhost")).vetoed
        assert not (await send(c, "1", room_id="!other:localhost")).vetoed
        assert reason(await send(c, "2", sender="@carol:localhost")).startswith(
            "flood: the room had 5 messages")
        now[0] = 11.0
        assert not (await send(c, "later")).vetoed


async def test_flood_counts_an_event_once_across_wires_and_survives_a_restart(
        tmp_path: Path) -> None:
    """The same event on two wires counts once and keeps its verdict; a new container on
    the same store (a restart, or a second instance) goes on counting."""
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    table = {"flood_messages": 2, "flood_seconds": 10}
    config = {"plugins": {"policy_server": table}, "store": {"path": str(tmp_path / "s.db")}}
    first = make_event("1")
    async with running_container({"policy_server": PolicyServer(clock=clock)}, config) as c:
        for wire in ("module", "appservice", "policy"):
            assert not (await c.dispatcher.intercept(
                "on_send_event", Event.from_json(first.to_json(), wire=wire))).vetoed
        assert not (await send(c, "2")).vetoed
    async with running_container({"policy_server": PolicyServer(clock=clock)}, config) as c:
        third = make_event("3")
        assert reason(await c.dispatcher.intercept("on_send_event", third)).startswith(
            "flood: @alice:localhost sent 3 messages")
        again = Event.from_json(third.to_json(), wire="appservice")
        assert (await c.dispatcher.intercept("on_send_event", again)).vetoed
        now[0] = 100.0  # the sweep forgets the quiet windows
        assert not (await send(c, "later", sender="@bob:localhost")).vetoed
        store = PluginStore(c.store, "policy_server")
        assert [key for key, _ in await store.items("flood/")] == [
            "flood/sender/!room:localhost @bob:localhost"]


async def test_links_blocked_domains_and_subdomains_and_max_links() -> None:
    """A link to a blocked domain or a subdomain is refused; too many links are; a link in
    body and formatted_body (and in an href and its text) counts once."""
    async with policy({"blocked_link_domains": ["evil.example"], "max_links": 2}) as c:
        assert reason(await send(c, "see https://www.EVIL.example/x")) == (
            "links: the message links to blocked domain 'www.EVIL.example'")
        assert not (await send(c, "see https://notevil.example and http://a.org")).vetoed
        assert reason(await send(c, "http://a.org http://b.org http://c.org")) == (
            "links: the message has 3 links (at most 2)")
        both = {"msgtype": "m.text", "body": "http://a.org http://b.org",
                "format": "org.matrix.custom.html",
                "formatted_body": '<a href="http://a.org">http://a.org</a> http://b.org'}
        assert not (await send(c, content=both)).vetoed
        three = {**both, "formatted_body": both["formatted_body"] + ' <a href="http://c.org">'}
        assert reason(await send(c, content=three)).startswith("links: the message has 3")


async def test_join_wave_refuses_joins_past_the_limit_per_room() -> None:
    """The third join within the window is refused (on any wire, counted once); other rooms
    are not; time heals."""
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    async with policy({"join_wave_joins": 2, "join_wave_seconds": 30},
                      PolicyServer(clock=clock)) as c:
        def join(user: str, room: str = "!room:localhost") -> Any:
            return send(c, type="m.room.member", state_key=user, sender=user, room_id=room,
                        content={"membership": "join"})

        assert not (await join("@a:x")).vetoed
        assert not (await join("@b:x")).vetoed
        assert reason(await join("@c:x")) == (
            "join_wave: 3 joins in 30 s (at most 2): a join wave")
        assert not (await join("@c:x", "!calm:localhost")).vetoed
        assert not (await send(c, type="m.room.member", state_key="@d:x", sender="@a:x",
                               content={"membership": "invite"})).vetoed
        now[0] = 31.0
        assert not (await join("@d:x")).vetoed


async def test_media_first_message() -> None:
    """Media before any text from that sender in that room is refused; after text it is not."""
    image = {"msgtype": "m.image", "body": "cat.png", "url": "mxc://x/y"}
    async with policy({"media_first_message": True}) as c:
        assert reason(await send(c, content=image)) == (
            "media_first: @alice:localhost's first message in the room is media")
        assert reason(await send(c, type="m.sticker", content=image)).startswith("media_first")
        assert not (await send(c, "hello")).vetoed
        assert not (await send(c, content=image)).vetoed
        assert (await send(c, content=image, room_id="!other:localhost")).vetoed


async def test_event_size() -> None:
    """An event over max_event_bytes is refused, whatever its type."""
    async with policy({"max_event_bytes": 400}) as c:
        assert reason(await send(c, "x" * 500)).startswith("event_size: the event is ")
        assert not (await send(c, "small")).vetoed


async def test_global_dry_run_refuses_nothing_and_logs_the_rule(
        caplog: pytest.LogCaptureFixture) -> None:
    """dry_run = true: the event goes through; the log says which rule would have refused."""
    caplog.set_level(logging.INFO)
    async with policy({"dry_run": True, "blocked_words": ["spam"]}) as c:
        assert not (await send(c, "spam")).vetoed
    assert "dry run: would refuse m.room.message" in caplog.text
    assert "rule blocked_words" in caplog.text


async def test_dry_run_per_rule_lets_other_rules_refuse(caplog: pytest.LogCaptureFixture) -> None:
    """A rule in dry_run_rules only logs; the next rule still refuses."""
    caplog.set_level(logging.INFO)
    table = {"dry_run_rules": ["blocked_words"], "blocked_words": ["spam"], "max_mentions": 1}
    async with policy(table) as c:
        assert not (await send(c, "spam")).vetoed
        assert reason(await send(c, "spam @a:x @b:x")).startswith("max_mentions: ")
    assert "rule blocked_words" in caplog.text


@pytest.mark.parametrize(("table", "message"), [
    ({"max_mentions": "3"}, r"max_mentions: must be a positive integer, not '3'"),
    ({"blocked_patterns": ["("]}, r"blocked_patterns: '\(' is no regular expression"),
    ({"blocked_words": "spam"}, r"blocked_words: must be a list of non-empty strings"),
    ({"flood_messages": 3}, r"flood_seconds: flood_messages and flood_seconds go together"),
    ({"join_wave_joins": 3}, r"join_wave_seconds: join_wave_joins and join_wave_seconds go"),
    ({"media_first_message": 1}, r"media_first_message: must be true or false"),
    ({"blocked_link_domains": [""]}, r"blocked_link_domains: must be a list of non-empty"),
    ({"admin_token": "short"}, r"admin_token: the admin route needs a token of at least 16"),
    ({"admin_port": 8091}, r"admin_port: no longer used: the admin route is served by the "
                           r"container at /_servletkit/plugins/policy_server/"),
    ({"management_room": "mods"}, r"management_room: must be a room id or alias"),
    ({"dry_run": "yes"}, r"dry_run: must be true or false"),
    ({"dry_run_rules": ["nope"]}, r"dry_run_rules: unknown rule 'nope'"),
    ({"blocked_word": ["x"]}, r"blocked_word: unknown key"),
    ({"policy_lists": ["!list:x"]}, r"policy_lists: needs the container's \[appservice\] section"),
    ({"communities": {"rooms": ["!a:x"]}}, r"communities: must be an array of tables"),
    ({"communities": [{"rooms": ["#a:x"]}]},
     r"communities\[0\]\.rooms: must be a non-empty list of room ids"),
    ({"communities": [{"rooms": ["!a:x"], "admin_port": 1}]},
     r"communities\[0\]\.admin_port: not a rule key"),
    ({"communities": [{"rooms": ["!a:x"], "max_mentions": 0}]},
     r"communities\[0\]\.max_mentions: must be a positive integer"),
    ({"communities": [{"rooms": ["!a:x"], "dry_run": "yes"}]},
     r"communities\[0\]\.dry_run: must be true or false"),
    ({"communities": [{"rooms": ["!a:x"]}, {"rooms": ["!a:x"]}]},
     r"communities\[1\]\.rooms: !a:x is in an earlier community already"),
])
async def test_config_errors_fail_init_naming_the_key(table: dict[str, Any], message: str) -> None:
    """servlet_init fails with a message naming the key."""
    with pytest.raises(RuntimeError, match=r"\[plugins\.policy_server\] " + message):
        async with policy(table):
            pass


async def test_a_community_has_its_own_rules_in_its_rooms() -> None:
    """In a community's rooms its keys override the global ones (the others are inherited);
    other rooms keep the global rules; its counting windows are its own."""
    quiet = "!quiet:localhost"
    table = {"blocked_words": ["spam"], "max_mentions": 1, "flood_messages": 2,
             "flood_seconds": 60, "communities": [
                 {"rooms": [quiet, "!calm:localhost"], "blocked_words": ["eggs"],
                  "flood_messages": 3}]}
    async with policy(table) as c:
        assert not (await send(c, "spam", room_id=quiet)).vetoed
        assert reason(await send(c, "eggs", room_id=quiet)).startswith("blocked_words: ")
        assert reason(await send(c, "@a:x @b:x", room_id=quiet)).startswith("max_mentions: ")
        assert reason(await send(c, "spam")).startswith("blocked_words: ")
        assert not (await send(c, "eggs")).vetoed
        assert not (await send(c, "second")).vetoed
        assert reason(await send(c, "third")).startswith("flood: ")  # 2 per 60 s
        for _ in range(3):
            assert not (await send(c, "hello", room_id="!calm:localhost")).vetoed
        assert reason(await send(c, "fourth", room_id="!calm:localhost")) == (
            "flood: @alice:localhost sent 4 messages in 60 s (at most 3)")
        keys = [key for key, _ in await PluginStore(c.store, "policy_server").items()
                if "flood/" in key]
        assert keys == ["community/0/flood/sender/!calm:localhost @alice:localhost",
                        "community/0/flood/sender/!quiet:localhost @alice:localhost",
                        "flood/sender/!room:localhost @alice:localhost"]


async def test_a_community_in_dry_run_only_logs_while_the_rest_is_enforced() -> None:
    """A community's dry_run = true: its rooms refuse nothing (content and counting rules
    alike) and audit what would have been refused; other rooms are enforced."""
    trial = "!trial:localhost"
    table = {"blocked_words": ["spam"], "flood_messages": 1, "flood_seconds": 60,
             "communities": [{"rooms": [trial], "dry_run": True}]}
    plugin = PolicyServer()
    async with policy(table, plugin) as c:
        assert not (await send(c, "spam", room_id=trial)).vetoed
        assert not (await send(c, "again", room_id=trial)).vetoed  # past the flood limit
        assert reason(await send(c, "spam")).startswith("blocked_words: ")  # not counted
        assert not (await send(c, "hello")).vetoed
        assert reason(await send(c, "again")).startswith("flood: ")
        store = PluginStore(c.store, "policy_server")
        decisions = await plugin.audit.newest(store, 10)
        assert [(d["rule"], d["outcome"], d["room_id"]) for d in decisions] == [
            ("blocked_words", "would refuse", trial), ("flood", "would refuse", trial),
            ("blocked_words", "refused", "!room:localhost"),
            ("flood", "refused", "!room:localhost")]
        community = (await plugin.describe(store))["communities"][0]
        assert community["dry_run"] is True
        assert {rule["name"]: rule["dry_run"] for rule in community["rules"]} == {
            "blocked_words": True, "flood": True, "policy_list": True}


def test_the_readme_config_blocks_are_valid() -> None:
    """Every [plugins.policy_server] table in the README parses, with every rule on."""
    import re
    import tomllib

    from servletkit_policy_server.config import RULE_NAMES, parse_settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    tables = [tomllib.loads(re.sub(r"(?m)^ {3}", "", text))["plugins"]["policy_server"]
              for text in re.findall(r"```toml\n(.*?)```", readme, flags=re.DOTALL)
              if "[plugins.policy_server]" in text]
    assert len(tables) == 2
    settings = [parse_settings(table) for table in tables]
    names = {rule.name for rule in (*settings[1].rules, *settings[1].stored)}
    assert names | {"policy_list"} == set(RULE_NAMES)
