"""A Matrix room and an XMPP group chat are one conversation (real Synapse, real Prosody)."""

from __future__ import annotations

import pytest
from servletkit_xmpp_gateway.testing import eventually

pytestmark = pytest.mark.integration

ROOM = "lobby@conference.localhost"
ALIAS = "#_xmpp_lobby_conference.localhost:localhost"


async def test_room_on_demand_and_messages_both_ways(gateway, matrix_user, xmpp_user) -> None:
    """Joining the alias creates the room; each side sees the other's words once."""
    alice = await matrix_user("Alice")
    room_id = await alice.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Alice" in human.occupants(ROOM))

    await alice.send(room_id, "hello from Matrix")
    got = await human.wait_message(lambda m: m["body"] == "hello from Matrix")
    assert got["type"] == "groupchat" and got["from"].resource == "Alice"

    human.say(ROOM, "hello from XMPP")
    event = await alice.wait_message(room_id, lambda e: e["content"]["body"] == "hello from XMPP")
    assert event["sender"] == "@_xmpp_human=40localhost:localhost"
    assert (await alice.members(room_id))[event["sender"]] == "human"

    # no echoes: each message once on each side
    bodies = [e["content"]["body"] for e in await alice.messages(room_id)]
    assert bodies.count("hello from Matrix") == 1 and bodies.count("hello from XMPP") == 1
    assert len(human.messages(lambda m: m["body"] == "hello from Matrix")) == 1
