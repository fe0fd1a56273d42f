"""Power levels ↔ MUC roles and affiliations, kicks and bans both ways (real Synapse,
real Prosody)."""

from __future__ import annotations

import asyncio

import pytest
from slixmpp import JID

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

HUMAN = "@_xmpp_human=40localhost:localhost"
BOB = "@_xmpp_bob=40localhost:localhost"
BOT = "@xmppbot:localhost"


async def _membership(user, room_id: str, member: str) -> dict:
    return await user.call("GET", f"/rooms/{room_id}/state/m.room.member/{member}")


async def _power(user, room_id: str, member: str) -> int | None:
    levels = await user.call("GET", f"/rooms/{room_id}/state/m.room.power_levels/")
    return levels.get("users", {}).get(member)


async def test_matrix_power_and_sanctions_reach_the_muc(gateway, gateway_bot, matrix_user,
                                                        xmpp_user) -> None:
    """A Matrix moderator's puppet is a MUC admin (a Matrix admin's an owner, back to a
    participant without power); their kick and ban of XMPP users kick and ban the
    occupants, without bouncing back."""
    room = "roles-out@conference.localhost"
    ann, mo = await matrix_user("Ann"), await matrix_user("Mo")
    room_id = await ann.join("#_xmpp_roles-out_conference.localhost:localhost")
    await mo.join(room_id)
    await gateway_bot.set_power(room_id, ann.user_id, 100)
    human, bob = await xmpp_user("human"), await xmpp_user("bob")
    await human.join(room, "human")
    await bob.join(room, "bob")
    await eventually(lambda: "Mo" in human.occupants(room))
    assert human.standing(room, "Mo") == ("none", "participant")

    await ann.set_power(room_id, mo.user_id, 50)
    await eventually(lambda: human.standing(room, "Mo") == ("admin", "moderator"))
    await ann.set_power(room_id, mo.user_id, 0)
    await eventually(lambda: human.standing(room, "Mo") == ("none", "participant"))
    await ann.set_power(room_id, mo.user_id, 100)
    await eventually(lambda: human.standing(room, "Mo") == ("owner", "moderator"))
    assert human.standing(room, "Ann") == ("owner", "moderator")  # the room's levels count

    await eventually(lambda: _membership(mo, room_id, HUMAN))
    await mo.call("POST", f"/rooms/{room_id}/kick", {"user_id": HUMAN, "reason": "calm down"})
    kicked = await human.wait_removed(room, "human", 307)
    assert "calm down" in kicked.xml.find(
        "{http://jabber.org/protocol/muc#user}x/{http://jabber.org/protocol/muc#user}item"
    ).findtext("{http://jabber.org/protocol/muc#user}reason")

    await eventually(lambda: _membership(mo, room_id, BOB))
    await mo.call("POST", f"/rooms/{room_id}/ban", {"user_id": BOB, "reason": "spam"})
    banned = await bob.wait_removed(room, "bob", 301)
    assert banned["muc"]["affiliation"] == "outcast"  # by real JID: no coming back

    await asyncio.sleep(0.3)  # time for a bounce to show up
    assert (await _membership(mo, room_id, HUMAN))["membership"] == "leave"
    assert (await _membership(mo, room_id, BOB))["membership"] == "ban"
    notices = [e for e in await mo.messages(room_id)
               if e["content"].get("msgtype") == "m.notice"]
    assert notices == []


async def test_xmpp_roles_and_sanctions_reach_matrix(gateway, gateway_bot, matrix_user,
                                                     xmpp_user) -> None:
    """An XMPP owner's virtual user gets the room's moderation power; their kick and ban
    of a Matrix user's puppet kick and ban the Matrix user, with the reason."""
    room = "roles-in@conference.localhost"
    human = await xmpp_user("human")
    await human.join(room, "human")  # first in: the MUC's owner
    mo = await matrix_user("Mo")
    room_id = await mo.join("#_xmpp_roles-in_conference.localhost:localhost")
    await eventually(lambda: "Mo" in human.occupants(room))
    # the room is not the gateway's: human's real JID is hidden, its occupant JID stands
    virtual = "@_xmpp_roles-in=40conference.localhost=2fhuman:localhost"
    assert await eventually(lambda: _power(mo, room_id, virtual)) == 50

    muc = human.plugin["xep_0045"]
    await muc.set_role(JID(room), "Mo", "none", reason="take a break")
    kicked = await eventually(lambda: _left(gateway_bot, room_id, mo.user_id, "leave"))
    assert kicked["reason"] == "kicked in XMPP by human: take a break"

    await mo.join(room_id)
    await eventually(lambda: "Mo" in human.occupants(room))
    puppet = f"{mo.user_id[1:].split(':')[0]}@matrix.localhost"
    await muc.set_affiliation(JID(room), "outcast", jid=JID(puppet), reason="enough")
    banned = await eventually(lambda: _left(gateway_bot, room_id, mo.user_id, "ban"))
    assert banned["reason"] == "banned in XMPP by human: enough"
    assert await gateway.plugin_data(f"member/{room_id}/{mo.user_id}") is None


async def _left(reader, room_id: str, member: str, membership: str) -> dict | None:
    """The member event of ``member`` once it is ``membership`` (read by a member)."""
    content = await _membership(reader, room_id, member)
    return content if content.get("membership") == membership else None
