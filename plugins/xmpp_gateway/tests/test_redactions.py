"""Redactions: Matrix redactions ↔ XEP-0424 retractions (real Synapse, real Prosody)."""

from __future__ import annotations

import asyncio

import pytest
from servletkit_xmpp_gateway.redactions import FALLBACK, RETRACT_NS

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "retract@conference.localhost"
ALIAS = "#_xmpp_retract_conference.localhost:localhost"
HUMAN = "@_xmpp_human=40localhost:localhost"


def _retract(user, to: str, target: str, mtype: str = "groupchat") -> None:
    """Retract ``target`` with a fallback body, as most XMPP clients do."""
    msg = user.compose(to, FALLBACK, mtype)
    msg["retract"]["id"] = target
    msg.send()


async def _redacted(user, room_id: str, event_id: str) -> dict | None:
    event = await user.call("GET", f"/rooms/{room_id}/event/{event_id}")
    return event["unsigned"].get("redacted_because")


async def test_redactions_and_retractions_in_a_group_chat(gateway, matrix_user,
                                                          xmpp_user) -> None:
    """Each side's author takes back their own message; nobody else's goes."""
    mo = await matrix_user("Mo")
    room_id = await mo.join(ALIAS)
    human = await xmpp_user("human")
    bob = await xmpp_user("bob")
    await human.join(ROOM, "human")
    await bob.join(ROOM, "bob")
    await eventually(lambda: "Mo" in human.occupants(ROOM))

    oops = await mo.send(room_id, "oops, wrong room")
    got = await human.wait_message(lambda m: m["body"] == "oops, wrong room")
    await mo.redact(room_id, oops)
    got_id = await human.muc_id(ROOM, got["id"])
    retraction = await human.wait_message(lambda m: m["retract"]["id"] == got_id)
    assert retraction["from"].resource == "Mo" and retraction["body"] == FALLBACK
    assert retraction.xml.find("{urn:xmpp:fallback:0}fallback").get("for") == RETRACT_NS

    said = await human.muc_id(ROOM, human.say(ROOM, "I regret this"))
    event = await mo.wait_message(room_id, lambda e: e["content"].get("body") == "I regret this")
    _retract(bob, ROOM, said)  # not bob's to take back
    _retract(human, ROOM, said)
    because = await eventually(lambda: _redacted(mo, room_id, event["event_id"]))
    assert because["sender"] == HUMAN

    await asyncio.sleep(0.3)  # time for a wrong redaction to show up
    redactions = [e["sender"] for e in await mo.events(room_id) if e["type"] == "m.room.redaction"]
    assert sorted(redactions) == sorted([mo.user_id, HUMAN])  # none by bob's virtual user


async def test_redactions_and_retractions_in_a_direct_chat(gateway, matrix_user,
                                                           xmpp_user) -> None:
    """The same in a DM, with the message ids of a 1:1 chat."""
    nell = await matrix_user("Nell")
    human = await xmpp_user("human")
    address = f"{nell.user_id[1:].split(':')[0]}@matrix.localhost"
    msg = human.compose(address, "psst, Nell", "chat")
    msg.send()
    room_id = (await eventually(nell.invites))[0]
    await nell.join(room_id)
    event = await nell.wait_message(room_id, lambda e: e["content"].get("body") == "psst, Nell")
    _retract(human, address, msg["id"], "chat")
    because = await eventually(lambda: _redacted(nell, room_id, event["event_id"]))
    assert because["sender"] == HUMAN

    mine = await nell.send(room_id, "forget I said this")
    got = await human.wait_message(lambda m: m["body"] == "forget I said this")
    await nell.redact(room_id, mine)
    retraction = await human.wait_message(lambda m: m["retract"]["id"] == got["id"])
    assert retraction["type"] == "chat" and retraction["from"].bare == address

    # both may redact anything in a DM; the XMPP user's message is not Nell's to retract
    human.tell(address, "moderate me")
    event = await nell.wait_message(room_id, lambda e: e["content"].get("body") == "moderate me")
    await nell.redact(room_id, event["event_id"])
    await eventually(lambda: "moderation is not carried" in gateway.log())
    assert len(human.messages(lambda m: m["retract"]["id"])) == 1


async def test_retractions_and_reactions_in_a_muc_private_chat(gateway, matrix_user,
                                                               xmpp_user) -> None:
    """A private message inside a MUC (occupant ``muc/human``) is taken back and reacted
    to like any direct chat: by its 1:1 id, between the occupant and the puppet."""
    room, occupant = "whisper-retract@conference.localhost", "human"
    hal = await matrix_user("Hal")
    await hal.join("#_xmpp_whisper-retract_conference.localhost:localhost")
    human = await xmpp_user("human")
    await human.join(room, occupant)
    await eventually(lambda: "Hal" in human.occupants(room))

    puppet = f"{room}/Hal"
    msg = human.compose(puppet, "between us", "chat")
    msg.send()
    room_id = (await eventually(hal.invites))[0]
    await hal.join(room_id)
    event = await hal.wait_message(room_id, lambda e: e["content"].get("body") == "between us")
    virtual = "@_xmpp_whisper-retract=40conference.localhost=2fhuman:localhost"
    assert event["sender"] == virtual

    await hal.send_event(room_id, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": event["event_id"], "key": "🤫"}})
    reacted = await human.wait_message(lambda m: m["reactions"]["id"] == msg["id"])
    assert reacted["type"] == "chat" and reacted["from"] == puppet
    assert reacted["reactions"].get_values(all_chars=True) == {"🤫"}

    _retract(human, puppet, msg["id"], "chat")
    because = await eventually(lambda: _redacted(hal, room_id, event["event_id"]))
    assert because["sender"] == virtual
