"""The appservice wire against a real Synapse: a `servletkit run` subprocess receives what a
real client does, acts back as virtual users, answers alias queries, redacts on veto, and
survives SIGKILL without losing or duplicating an event."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from servletkit.testing.waiting import eventually
from tests.appservice.conftest import AS_ID, AS_TOKEN

pytestmark = pytest.mark.integration


async def test_client_events_reach_the_plugin(deployment, alice):
    """A message sent by a real client is observed by the plugin, once."""
    room_id = await alice.room_with_bot(deployment.bot_id)
    event_id = await alice.send(room_id, "hello servletkit")

    async def seen() -> Any:
        return (await deployment.plugin_data("seen/")).get(event_id)

    assert await eventually(seen) == 1


async def test_virtual_user_registers_joins_and_replies(deployment, alice):
    """`!echo` makes the plugin register a virtual user that joins and answers in the room."""
    room_id = await alice.room_with_bot(deployment.bot_id)
    await alice.send(room_id, "!echo round trip")

    async def reply():
        page = await alice.call("GET", f"/rooms/{quote(room_id)}/messages", dir="b", limit=20)
        return [e for e in page["chunk"] if e["sender"] == "@_astest_echo:localhost"
                and e["type"] == "m.room.message"]

    [answer] = await eventually(reply)
    assert answer["content"]["body"] == "echo: round trip"
    profile = await alice.call("GET", "/profile/@_astest_echo:localhost")
    assert profile["displayname"] == "Echo"


async def test_alias_query_creates_the_room_the_client_joins(deployment, alice):
    """Resolving an unknown alias in the namespace makes the plugin create the room."""
    alias = f"#_astest_lobby{id(alice)}:localhost"
    resolved = await alice.call("GET", f"/directory/room/{quote(alias)}")
    joined = await alice.call("POST", f"/join/{quote(alias)}", {})
    assert joined["room_id"] == resolved["room_id"]
    outside = await alice.http.get(f"/_matrix/client/v3/directory/room/{quote('#nope:localhost')}")
    assert outside.status_code == 404


async def test_ping(deployment):
    """The homeserver reaches the container: the client-server ping answers with a duration."""
    assert deployment.synapse is not None
    async with httpx.AsyncClient(base_url=deployment.synapse.url) as http:
        response = await http.post(f"/_matrix/client/v1/appservice/{AS_ID}/ping",
                                   json={"transaction_id": "ping-1"},
                                   headers={"Authorization": f"Bearer {AS_TOKEN}"})
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["duration_ms"], int)


async def test_veto_in_redact_mode_redacts_the_event(deployment, alice):
    """A vetoed message is redacted by the appservice user, with the veto's reason."""
    room_id = await alice.room_with_bot(deployment.bot_id)
    event_id = await alice.send(room_id, "this has the forbidden-word in it")

    async def redacted():
        event = await alice.call("GET", f"/rooms/{quote(room_id)}/event/{quote(event_id)}")
        return event["unsigned"].get("redacted_because")

    redaction = await eventually(redacted)
    assert redaction["sender"] == deployment.bot_id
    assert redaction["content"]["reason"] == "forbidden-word is not welcome here"


async def test_typing_reaches_on_ephemeral(deployment, alice):
    """Typing notifications (receive_ephemeral) reach on_ephemeral."""
    room_id = await alice.room_with_bot(deployment.bot_id)
    await alice.call("PUT", f"/rooms/{quote(room_id)}/typing/{quote(alice.user_id)}",
                     {"typing": True, "timeout": 5000})

    async def typing() -> Any:
        return (await deployment.plugin_data("typing/")).get(room_id)

    assert await eventually(typing) == [alice.user_id]


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(deployment, alice):
    """Kill -9 while transactions are being handled, send while down, restart: every message
    is observed exactly once."""
    room_id = await alice.room_with_bot(deployment.bot_id)
    sent: list[str] = []

    async def send_stream():
        for i in range(30):
            sent.append(await alice.send(room_id, f"slow {i}"))

    sender = asyncio.create_task(send_stream())
    async def three_seen() -> bool:
        return len(await deployment.seen(sent)) >= 3

    await eventually(three_seen, interval=0.005)
    deployment.kill_container()
    seen_at_kill = await deployment.seen(sent)
    await sender
    assert len(seen_at_kill) < len(sent), "the kill came too late to be mid-stream"
    sent += [await alice.send(room_id, f"while down {i}") for i in range(10)]
    deployment.start_container()
    assert deployment.synapse is not None
    async with httpx.AsyncClient(base_url=deployment.synapse.url) as http:
        # a successful ping makes Synapse retry at once instead of after its back-off; the
        # first may fail on a connection Synapse kept to the killed container (502)
        async def ping() -> bool:
            response = await http.post(f"/_matrix/client/v1/appservice/{AS_ID}/ping",
                                       json={}, headers={"Authorization": f"Bearer {AS_TOKEN}"})
            assert response.status_code in (200, 502), response.text
            return response.status_code == 200

        await eventually(ping, within=10)
    # Wait for Synapse's recovery to finish before sending more: an event sent while its
    # recoverer is finishing can be left in an unsent transaction until the next failure
    # (Synapse 1.163 checks "service up" before creating the transaction, the recoverer
    # may already have looked for the oldest unsent one).
    await eventually(deployment.has_seen(sent), within=30)
    sent += [await alice.send(room_id, f"after {i}") for i in range(5)]
    await eventually(deployment.has_seen(sent))
    await asyncio.sleep(0.3)  # nothing is delivered a second time later either
    seen = await deployment.plugin_data("seen/")
    assert {event_id: seen[event_id] for event_id in sent} == dict.fromkeys(sent, 1)


async def send_until_seen(deployment, alice, room_id: str, count: int, label: str) -> list[str]:
    """Send ``count`` messages and wait until the plugin has observed each of them."""
    sent = [await alice.send(room_id, f"{label} {i}") for i in range(count)]
    await eventually(deployment.has_seen(sent), within=30)
    return sent


async def counted_once(deployment, sent: list[str]) -> dict[str, int]:
    seen = await deployment.plugin_data("seen/")
    return {event_id: seen.get(event_id, 0) for event_id in sent}


async def test_a_restarted_homeserver_reuses_ids_and_nothing_is_dropped(deployment, alice):
    """Synapse on SQLite numbers transactions from 1 again after a restart: the container, still
    running, tells the reused ids from retries and observes every new message once."""
    assert deployment.synapse is not None
    room_id = await alice.room_with_bot(deployment.bot_id)
    sent = await send_until_seen(deployment, alice, room_id, 3, "before restart")
    log = deployment.workdir / "container.log"
    warnings_before = log.read_text().count("transaction counter went back")
    await asyncio.to_thread(deployment.synapse.restart)
    sent += await send_until_seen(deployment, alice, room_id, 5, "after restart")
    await asyncio.sleep(0.3)  # nothing is delivered a second time later either
    assert await counted_once(deployment, sent) == dict.fromkeys(sent, 1)
    # the ids were reused indeed (else this test would not show anything)
    assert log.read_text().count("transaction counter went back") > warnings_before


async def test_both_restarted_as_servletkit_dev_does(deployment, alice):
    """Container and homeserver stopped, then both started again (what Ctrl-C and a new
    `servletkit dev` do): every message is observed exactly once, before and after."""
    assert deployment.synapse is not None
    room_id = await alice.room_with_bot(deployment.bot_id)
    sent = await send_until_seen(deployment, alice, room_id, 3, "first life")
    for life in ("second life", "third life"):
        await asyncio.to_thread(deployment.stop_container)
        await asyncio.to_thread(deployment.synapse.stop)
        await asyncio.to_thread(deployment.start_container)
        await asyncio.to_thread(deployment.synapse.restart)
        sent += await send_until_seen(deployment, alice, room_id, 3, life)
    await asyncio.sleep(0.3)
    assert await counted_once(deployment, sent) == dict.fromkeys(sent, 1)
    # and nothing the session delivered before was counted twice either
    assert set((await deployment.plugin_data("seen/")).values()) == {1}


async def test_a_plugin_acts_in_matrix_from_servlet_init(deployment, alice):
    """A plugin that creates or joins a room from servlet_init, while the module wire fails
    closed for room creation and joins, gets through: the wires listen before plugins start."""
    assert deployment.synapse is not None
    lives = (await deployment.plugin_data("init/")).get("lives", 0)
    await asyncio.to_thread(deployment.stop_container)
    await asyncio.to_thread(deployment.start_container)
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{deployment.url}/_servletkit/health")).json()
    assert health["failed"] == [], (deployment.workdir / "container.log").read_text()[-3000:]
    init = await deployment.plugin_data("init/")
    assert init["lives"] == lives + 1
    alias = quote("#_astest_init:localhost")
    assert (await alice.call("GET", f"/directory/room/{alias}"))["room_id"] == init["room"]
    assert (await alice.call("POST", f"/join/{alias}", {}))["room_id"] == init["room"]
    assert deployment.bot_id in await alice.members(init["room"])
