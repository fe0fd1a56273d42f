"""Direct messages through the gateway, started from either side (real Synapse, Prosody)."""

from __future__ import annotations

import pytest

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration


async def test_xmpp_user_writes_to_a_matrix_users_address(gateway, matrix_user,
                                                          xmpp_user) -> None:
    """human → erin@matrix.localhost opens a Matrix DM; Erin's reply goes back 1:1."""
    erin = await matrix_user("Erin")
    human = await xmpp_user("human")
    localpart = erin.user_id[1:].split(":")[0]
    human.tell(f"{localpart}@matrix.localhost", "psst, Erin")

    room_id = (await eventually(erin.invites))[0]
    await erin.join(room_id)
    event = await erin.wait_message(room_id, lambda e: e["content"]["body"] == "psst, Erin")
    assert event["sender"] == "@_xmpp_human=40localhost:localhost"

    await erin.send(room_id, "psst back")
    got = await human.wait_message(lambda m: m["body"] == "psst back")
    assert got["type"] == "chat" and got["from"].bare == f"{localpart}@matrix.localhost"

    human.tell(f"{localpart}@matrix.localhost", "second")
    await erin.wait_message(room_id, lambda e: e["content"]["body"] == "second")
    assert await erin.invites() == []  # the same DM room, not a new one


async def test_matrix_user_invites_an_xmpp_users_virtual_user(gateway, matrix_user,
                                                              xmpp_user) -> None:
    """Inviting @_xmpp_bob=40localhost makes a DM with bob@localhost, both ways."""
    frank = await matrix_user("Frank")
    bob = await xmpp_user("bob")
    virtual = "@_xmpp_bob=40localhost:localhost"
    room_id = await frank.direct_room(virtual)

    await frank.send(room_id, "hi bob, from Matrix")
    got = await bob.wait_message(lambda m: m["body"] == "hi bob, from Matrix")
    localpart = frank.user_id[1:].split(":")[0]
    assert got["type"] == "chat" and got["from"].bare == f"{localpart}@matrix.localhost"

    bob.tell(f"{localpart}@matrix.localhost", "hi Frank, from XMPP")
    event = await frank.wait_message(room_id, lambda e: e["content"]["body"]
                                     == "hi Frank, from XMPP")
    assert event["sender"] == virtual


async def test_private_messages_between_muc_occupants(gateway, matrix_user, xmpp_user) -> None:
    """human's private message to Gale's nick in a MUC opens a Matrix DM with the
    occupant ``muc/human``; Gale's reply goes back as a private message in the MUC."""
    room = "whispers@conference.localhost"
    gale = await matrix_user("Gale")
    await gale.join("#_xmpp_whispers_conference.localhost:localhost")
    human = await xmpp_user("human")
    await human.join(room, "human")
    await eventually(lambda: "Gale" in human.occupants(room))

    human.tell(f"{room}/Gale", "just between us")
    room_id = (await eventually(gale.invites))[0]
    await gale.join(room_id)
    event = await gale.wait_message(room_id, lambda e: e["content"]["body"] == "just between us")
    assert event["sender"] == "@_xmpp_whispers=40conference.localhost=2fhuman:localhost"
    assert (await gale.members(room_id))[event["sender"]] == "human"

    await gale.send(room_id, "agreed")
    got = await human.wait_message(lambda m: m["body"] == "agreed")
    assert got["type"] == "chat" and got["from"] == f"{room}/Gale"
    assert not human.messages(lambda m: m["type"] == "groupchat" and m["body"] == "agreed")
