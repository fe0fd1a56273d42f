"""Replies: XEP-0461 ↔ m.in_reply_to, fallbacks cut and added (real Synapse, Prosody)."""

from __future__ import annotations

import pytest
from servletkit_xmpp_gateway.replies import without_fallback

from servletkit.testing.waiting import eventually

ROOM = "replies@conference.localhost"
ALIAS = "#_xmpp_replies_conference.localhost:localhost"


@pytest.mark.integration
async def test_replies_both_ways(gateway, matrix_user, xmpp_user) -> None:
    """A Matrix reply (with its legacy fallback) reaches XMPP as a XEP-0461 reply with a
    marked quote; an XMPP reply reaches Matrix as m.in_reply_to without its quote."""
    jana = await matrix_user("Jana")
    room_id = await jana.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Jana" in human.occupants(ROOM))

    asked_id = human.say(ROOM, "lunch at noon?")
    asked = await jana.wait_message(room_id, lambda e: e["content"]["body"] == "lunch at noon?")
    await jana.send_event(room_id, "m.room.message", {
        "msgtype": "m.text", "body": "> <@_xmpp_human=40localhost:localhost> lunch at noon?"
                                     "\n\nyes, see you",
        "format": "org.matrix.custom.html",
        "formatted_body": "<mx-reply><blockquote>lunch at noon?</blockquote></mx-reply>"
                          "yes, <b>see</b> you",
        "m.relates_to": {"m.in_reply_to": {"event_id": asked["event_id"]}}})
    asked_ref = await human.muc_id(ROOM, asked_id)
    reply = await human.wait_message(lambda m: m["reply"]["id"] == asked_ref)
    assert reply["reply"]["to"] == f"{ROOM}/human"
    assert reply["body"] == "> human:\n> lunch at noon?\nyes, see you"
    assert reply["reply"].strip_fallback_content() == "yes, see you"
    assert reply["html"]["body"] == "yes, <strong>see</strong> you"

    quoted = human.compose(ROOM, "great")
    quoted["reply"]["id"] = await human.muc_id(ROOM, reply["id"])
    quoted["reply"]["to"] = f"{ROOM}/Jana"
    quoted["reply"].add_quoted_fallback("yes, see you", "Jana")
    quoted.send()
    event = await jana.wait_message(room_id, lambda e: e["content"]["body"] == "great")
    replied = await jana.messages(room_id)
    mine = next(e for e in replied if e["content"].get("body", "").endswith("yes, see you"))
    assert event["content"]["m.relates_to"] == {"m.in_reply_to": {"event_id": mine["event_id"]}}
    assert "formatted_body" not in event["content"]


def test_a_matrix_reply_fallback_is_cut() -> None:
    """Only the leading quote and the blank line after it go; other quotes stay."""
    reply = {"body": "> <@a:x> hi\n> there\n\nhello\n> not a fallback",
             "m.relates_to": {"m.in_reply_to": {"event_id": "$e"}}}
    assert without_fallback(reply)["body"] == "hello\n> not a fallback"
    assert without_fallback({"body": "> quote\n\nhi"}) == {"body": "> quote\n\nhi"}


@pytest.mark.integration
async def test_replies_and_edits_in_a_direct_chat(gateway, matrix_user, xmpp_user) -> None:
    """In a DM a reply names the message's own id and the XMPP user's bare JID."""
    olga = await matrix_user("Olga")
    human = await xmpp_user("human")
    address = f"{olga.user_id[1:].split(':')[0]}@matrix.localhost"
    asked = human.compose(address, "coffee?", "chat")
    asked.send()
    room_id = (await eventually(olga.invites))[0]
    await olga.join(room_id)
    event = await olga.wait_message(room_id, lambda e: e["content"]["body"] == "coffee?")

    first = await olga.send_event(room_id, "m.room.message", {
        "msgtype": "m.text", "body": "> <@_xmpp_human=40localhost:localhost> coffee?\n\nsure",
        "m.relates_to": {"m.in_reply_to": {"event_id": event["event_id"]}}})
    reply = await human.wait_message(lambda m: m["reply"]["id"] == asked["id"])
    assert reply["type"] == "chat" and reply["reply"]["to"] == "human@localhost"
    assert reply["reply"].strip_fallback_content() == "sure"

    await olga.send_event(room_id, "m.room.message", {
        "msgtype": "m.text", "body": "* sure, at ten",
        "m.new_content": {"msgtype": "m.text", "body": "sure, at ten"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": first}})
    edit = await human.wait_message(lambda m: m["body"] == "sure, at ten")
    assert edit["replace"]["id"] == reply["id"]
