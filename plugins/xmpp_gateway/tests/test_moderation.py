"""Moderation: a moderator's redaction of someone else's message ↔ XEP-0425 (real
Synapse, real Prosody with mod_muc_moderation)."""

from __future__ import annotations

import asyncio

import pytest
from servletkit_xmpp_gateway import moderation

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

HUMAN = "@_xmpp_human=40localhost:localhost"


async def _redaction(user, room_id: str, event_id: str) -> dict | None:
    event = await user.call("GET", f"/rooms/{room_id}/event/{event_id}")
    return event["unsigned"].get("redacted_because")


async def test_a_matrix_moderator_removes_an_xmpp_message(gateway, gateway_bot, matrix_user,
                                                          xmpp_user) -> None:
    """A Matrix moderator's redaction of an XMPP user's message retracts it in the MUC
    for everybody, with the reason; the MUC's announcement does not come back."""
    room = "moderate-out@conference.localhost"
    mo = await matrix_user("Mo")
    room_id = await mo.join("#_xmpp_moderate-out_conference.localhost:localhost")
    await gateway_bot.set_power(room_id, mo.user_id, 50)
    human, bob = await xmpp_user("human"), await xmpp_user("bob")
    await human.join(room, "human")
    await bob.join(room, "bob")
    await eventually(lambda: "Mo" in bob.occupants(room))

    said = human.say(room, "buy cheap watches")
    stanza_id = await bob.muc_id(room, said)
    event = await mo.wait_message(room_id,
                                  lambda e: e["content"].get("body") == "buy cheap watches")
    await mo.redact(room_id, event["event_id"], "spam")

    announced = await bob.wait_message(lambda m: (moderation.read(m) or {}).get("stanza_id")
                                       == stanza_id)
    found = moderation.read(announced)
    assert found is not None and "spam" in found["reason"]
    assert announced["from"].bare == room
    await asyncio.sleep(0.3)  # time for an echo to show up as a second redaction
    redactions = [e for e in await mo.events(room_id) if e["type"] == "m.room.redaction"]
    assert [e["sender"] for e in redactions] == [mo.user_id]


async def test_an_xmpp_moderator_removes_a_matrix_message(gateway, matrix_user,
                                                          xmpp_user) -> None:
    """An XMPP moderator's XEP-0425 moderation of a Matrix user's message redacts it in
    Matrix with the moderator's reason."""
    room = "moderate-in@conference.localhost"
    human = await xmpp_user("human")
    await human.join(room, "human")  # first in: the MUC's owner, so a moderator
    mo = await matrix_user("Mo")
    room_id = await mo.join("#_xmpp_moderate-in_conference.localhost:localhost")
    await eventually(lambda: "Mo" in human.occupants(room))

    mine = await mo.send(room_id, "something regrettable")
    got = await human.wait_message(lambda m: m["body"] == "something regrettable")
    stanza_id = await human.muc_id(room, got["id"])
    await human.moderate(room, stanza_id, "off topic")

    because = await eventually(lambda: _redaction(mo, room_id, mine))
    assert "off topic" in because["content"]["reason"]
    # human is an owner there, so its virtual user (of its occupant JID: the room is not
    # the gateway's) has the power to redact
    assert because["sender"] == "@_xmpp_moderate-in=40conference.localhost=2fhuman:localhost"
