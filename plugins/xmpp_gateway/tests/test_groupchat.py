"""A Matrix room and an XMPP group chat are one conversation (real Synapse, real Prosody)."""

from __future__ import annotations

import asyncio

import pytest

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "lobby@conference.localhost"
ALIAS = "#_xmpp_lobby_conference.localhost:localhost"


async def test_room_on_demand_and_messages_both_ways(gateway, nio_user, xmpp_user) -> None:
    """Joining the alias creates the room; each side sees the other's words once (a
    matrix-nio client on the Matrix side, seeing messages through its /sync)."""
    alice = await nio_user("Alice")
    room_id = await alice.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Alice" in human.occupants(ROOM))

    sent = await alice.send(room_id, "hello from Matrix")
    got = await human.wait_message(lambda m: m["body"] == "hello from Matrix")
    assert got["type"] == "groupchat" and got["from"].resource == "Alice"

    said = human.say(ROOM, "hello from XMPP")
    event = await alice.wait_message(room_id, lambda e: e["content"]["body"] == "hello from XMPP")
    assert event["sender"] == "@_xmpp_human=40localhost:localhost"
    assert (await alice.members(room_id))[event["sender"]] == "human"

    # the message-id map, both ways (origin-id: XEP-0359, set by the gateway)
    assert got.xml.find("{urn:xmpp:sid:0}origin-id").get("id") == got["id"]
    got_id = await human.muc_id(ROOM, got["id"])  # the MUC's; the gateway learns it
    assert await eventually(lambda: gateway.plugin_data(f"msg/x/{ROOM}/{got_id}")) == sent
    assert await gateway.plugin_data(f"msg/m/{sent}") == {
        "scope": ROOM, "id": got["id"], "origin_id": got["id"], "stanza_id": got_id}
    assert await gateway.plugin_data(f"msg/x/{ROOM}/{got['id']}") == sent
    assert await gateway.plugin_data(f"msg/x/{ROOM}/{said}") == event["event_id"]
    assert (await gateway.plugin_data(f"msg/m/{event['event_id']}"))["id"] == said

    # no echoes: each message once on each side
    await asyncio.sleep(0.5)  # time for a duplicate to show up, if there were one
    bodies = [e["content"]["body"] for e in alice.messages(room_id)]
    assert bodies.count("hello from Matrix") == 1 and bodies.count("hello from XMPP") == 1
    assert len(human.messages(lambda m: m["body"] == "hello from Matrix")) == 1


async def test_formatted_messages_both_ways(gateway, matrix_user, xmpp_user) -> None:
    """Matrix HTML arrives as XHTML-IM with a plain body; XHTML-IM arrives as Matrix HTML."""
    room = "styles@conference.localhost"
    dora = await matrix_user("Dora")
    room_id = await dora.join("#_xmpp_styles_conference.localhost:localhost")
    human = await xmpp_user("human")
    await human.join(room, "human")
    await eventually(lambda: "Dora" in human.occupants(room))

    await dora.send(room_id, "this is bold", html="this is <b>bold</b><br>")
    got = await human.wait_message(lambda m: m["body"] == "this is bold")
    assert got["html"]["body"] == "this is <strong>bold</strong><br />"

    human.say(room, "and this is emphasised", xhtml="and this is <em>emphasised</em>")
    event = await dora.wait_message(room_id, lambda e: e["content"]["body"]
                                    == "and this is emphasised")
    assert event["content"]["format"] == "org.matrix.custom.html"
    assert event["content"]["formatted_body"] == "and this is <em>emphasised</em>"

    # what has no XMPP form (an encrypted file has no plain link) is not carried, and its
    # sender is told
    await dora.call("PUT", f"/rooms/{room_id}/send/m.room.message/img1", {
        "msgtype": "m.image", "body": "cat.png", "file": {"url": "mxc://localhost/cat"}})
    notice = await dora.wait_message(room_id, lambda e: e["content"]["msgtype"] == "m.notice")
    assert dora.user_id in notice["content"]["body"]
    assert "cannot be carried" in notice["content"]["body"]


async def test_nick_conflict_gets_a_suffix_and_the_matrix_user_is_told(
        gateway, matrix_user, xmpp_user) -> None:
    """A Matrix user whose name is taken in the MUC joins as 'Name (2)' and gets a notice."""
    room = "clash@conference.localhost"
    bob = await xmpp_user("bob")
    await bob.join(room, "Carol")
    carol = await matrix_user("Carol")
    room_id = await carol.join("#_xmpp_clash_conference.localhost:localhost")

    await eventually(lambda: "Carol (2)" in bob.occupants(room))
    notice = await carol.wait_message(room_id, lambda e: e["content"]["msgtype"] == "m.notice")
    assert carol.user_id in notice["content"]["body"] and "'Carol (2)'" in notice["content"]["body"]

    await carol.send(room_id, "which Carol am I?")
    got = await bob.wait_message(lambda m: m["body"] == "which Carol am I?")
    assert got["from"].resource == "Carol (2)"
    # the XMPP Carol is a virtual user of her own, named after her nick; nobody twice
    members = await carol.members(room_id)
    assert sorted(name for name in members.values() if name and "Carol" in name) == [
        "Carol", "Carol"]
    assert len(members) == 3  # the gateway's bot, the Matrix Carol, the XMPP Carol


async def test_a_room_bridged_by_configuration_exists_from_the_start(
        gateway, matrix_user, xmpp_user) -> None:
    """`rooms` in the config: the alias resolves and the gateway is in the MUC unasked."""
    human = await xmpp_user("human")
    await human.join("configured@conference.localhost", "human")
    await eventually(lambda: "Matrix" in human.occupants("configured@conference.localhost"))
    ivy = await matrix_user("Ivy")
    alias = "%23_xmpp_configured_conference.localhost%3Alocalhost"
    resolved = await ivy.call("GET", f"/directory/room/{alias}")
    room_id = await ivy.join("#_xmpp_configured_conference.localhost:localhost")
    assert resolved["room_id"] == room_id
    human.say("configured@conference.localhost", "configured and working")
    await ivy.wait_message(room_id, lambda e: e["content"]["body"] == "configured and working")
