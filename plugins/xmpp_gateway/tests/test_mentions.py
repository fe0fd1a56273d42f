"""Mentions of puppets in a group chat, both ways (real Synapse, real Prosody)."""

from __future__ import annotations

import pytest
from servletkit_xmpp_gateway.mentions import PERMALINK, REFERENCE_NS

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "mentions@conference.localhost"
HUMAN = "@_xmpp_human=40localhost:localhost"


async def test_mentions_cross_both_ways(gateway, matrix_user, xmpp_user) -> None:
    """A Matrix pill of an XMPP user's virtual user arrives as the occupant's nick (with a
    XEP-0372 reference); an XMPP message naming a Matrix user's nick mentions them."""
    mo = await matrix_user("Mo")
    room_id = await mo.join("#_xmpp_mentions_conference.localhost:localhost")
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Mo" in human.occupants(ROOM))
    await eventually(lambda: _has(mo, room_id, HUMAN))

    await mo.call("PUT", f"/rooms/{room_id}/send/m.room.message/pill1", {
        "msgtype": "m.text", "body": f"{HUMAN}: have a look",
        "format": "org.matrix.custom.html",
        "formatted_body": f'<a href="{PERMALINK}{HUMAN}">{HUMAN}</a>: have a look',
        "m.mentions": {"user_ids": [HUMAN]}})
    got = await human.wait_message(lambda m: m["body"].endswith("have a look"))
    assert got["body"] == "human: have a look"
    reference = got.xml.find(f"{{{REFERENCE_NS}}}reference")
    assert reference is not None and reference.get("uri") == f"xmpp:{ROOM}/human"
    assert (reference.get("begin"), reference.get("end")) == ("0", "5")

    await mo.call("PUT", f"/rooms/{room_id}/send/m.room.message/pill2", {
        "msgtype": "m.text", "body": "are you there?", "m.mentions": {"user_ids": [HUMAN]}})
    await human.wait_message(lambda m: m["body"] == "human: are you there?")

    human.say(ROOM, "Mo: yes, here")
    event = await mo.wait_message(room_id, lambda e: e["content"].get("body") == "Mo: yes, here")
    assert event["content"]["m.mentions"] == {"user_ids": [mo.user_id]}
    assert event["content"]["formatted_body"] == (
        f'<a href="{PERMALINK}{mo.user_id}">Mo</a>: yes, here')
    human.say(ROOM, "Moments later, nobody")
    plain = await mo.wait_message(room_id, lambda e: e["content"].get("body", "").startswith(
        "Moments"))
    assert "m.mentions" not in plain["content"]


async def _has(user, room_id: str, member: str) -> bool:
    return member in await user.members(room_id)
