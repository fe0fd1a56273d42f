"""Typing: XEP-0085 chat states ↔ m.typing, in a MUC and a DM (real Synapse, Prosody)."""

from __future__ import annotations

import asyncio

import pytest

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "typing@conference.localhost"
ALIAS = "#_xmpp_typing_conference.localhost:localhost"
HUMAN = "@_xmpp_human=40localhost:localhost"


def _states(user, sender: str) -> list[str]:
    """The chat states ``user`` received from ``sender`` (a full or bare JID), in order."""
    return [m["chat_state"] for m in user.messages(
        lambda m: m["chat_state"] and sender in (str(m["from"]), m["from"].bare))]


async def test_typing_crosses_a_muc_both_ways_without_echo(gateway, matrix_user,
                                                          xmpp_user) -> None:
    """Matrix typing → composing/paused from the puppet; XMPP composing/active → the
    virtual user typing and stopping; neither comes back to where it started."""
    tess = await matrix_user("Tess")
    room_id = await tess.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Tess" in human.occupants(ROOM))
    path = f"/rooms/{room_id}/typing/{tess.user_id}"

    await tess.call("PUT", path, {"typing": True, "timeout": 20000})
    await eventually(lambda: _states(human, f"{ROOM}/Tess") == ["composing"])
    await asyncio.sleep(1.0)  # time for the MUC's reflection to come back, if it could
    assert await tess.typing(room_id) == {tess.user_id}
    await tess.call("PUT", path, {"typing": False})
    await eventually(lambda: _states(human, f"{ROOM}/Tess") == ["composing", "paused"])

    composing = human.compose(ROOM)
    composing["chat_state"] = "composing"
    composing.send()
    await eventually(lambda: _has(tess, room_id, HUMAN))
    active = human.compose(ROOM, "done typing")
    active["chat_state"] = "active"
    active.send()
    await tess.wait_message(room_id, lambda e: e["content"]["body"] == "done typing")
    await eventually(lambda: _lacks(tess, room_id, HUMAN))

    await asyncio.sleep(1.0)  # time for an echo to come round, if there were one
    assert _states(human, f"{ROOM}/Tess") == ["composing", "paused"]
    others = {str(m["from"]) for m in human.messages(lambda m: m["chat_state"])}
    assert others <= {f"{ROOM}/Tess", f"{ROOM}/human"}  # the MUC reflects human's own


async def test_typing_crosses_a_dm_both_ways(gateway, matrix_user, xmpp_user) -> None:
    """In a DM, Matrix typing is a 1:1 chat state and an XMPP composing types in Matrix."""
    uma = await matrix_user("Uma")
    bob = await xmpp_user("bob")
    virtual = "@_xmpp_bob=40localhost:localhost"
    room_id = await uma.direct_room(virtual)
    localpart = uma.user_id[1:].split(":")[0]
    puppet = f"{localpart}@matrix.localhost"

    await uma.call("PUT", f"/rooms/{room_id}/typing/{uma.user_id}",
                   {"typing": True, "timeout": 20000})
    await eventually(lambda: _states(bob, puppet) == ["composing"])
    assert all(m["type"] == "chat" for m in bob.messages(lambda m: m["chat_state"]))

    bob.send_message(mto=puppet, mbody="hello Uma", mtype="chat")  # a DM needs a message
    await uma.wait_message(room_id, lambda e: e["content"]["body"] == "hello Uma")
    composing = bob.compose(puppet, mtype="chat")
    composing["chat_state"] = "composing"
    composing.send()
    await eventually(lambda: _has(uma, room_id, virtual))
    paused = bob.compose(puppet, mtype="chat")
    paused["chat_state"] = "paused"
    paused.send()
    await eventually(lambda: _lacks(uma, room_id, virtual))


async def _has(user, room_id: str, typist: str) -> bool:
    return typist in await user.typing(room_id)


async def _lacks(user, room_id: str, typist: str) -> bool:
    return typist not in await user.typing(room_id)
