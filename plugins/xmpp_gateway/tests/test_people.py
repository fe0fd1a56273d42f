"""People follow both ways: joins, leaves, nick and display-name changes (real servers)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from slixmpp import JID

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "people@conference.localhost"
ALIAS = "#_xmpp_people_conference.localhost:localhost"
HUMAN = "@_xmpp_human=40localhost:localhost"


async def test_joins_leaves_and_renames_follow_both_ways(gateway, matrix_user,
                                                         xmpp_user) -> None:
    """Each side sees the other's people arrive, change their names and go."""
    hana = await matrix_user("Hana")
    room_id = await hana.join(ALIAS)
    human, bob = await xmpp_user("human"), await xmpp_user("bob")
    await bob.join(ROOM, "bob")
    await human.join(ROOM, "human")
    await eventually(lambda: "Hana" in bob.occupants(ROOM))
    members = await eventually(lambda: _with(hana, room_id, HUMAN))
    assert members[HUMAN] == "human"

    await hana.set_displayname("Hana B")  # a Matrix rename is a nick change in the MUC
    await eventually(lambda: "Hana B" in bob.occupants(ROOM) and "Hana" not in
                     bob.occupants(ROOM))

    human.send_presence(pto=JID(f"{ROOM}/humane"))  # an XMPP nick change renames the user
    await eventually(lambda: _named(hana, room_id, HUMAN, "humane"))

    human.plugin["xep_0045"].leave_muc(JID(ROOM), "humane")  # leaving XMPP leaves Matrix
    await eventually(lambda: _without(hana, room_id, HUMAN))

    await hana.call("POST", f"/rooms/{quote(room_id)}/leave", {})  # and the other way
    await eventually(lambda: "Hana B" not in bob.occupants(ROOM))
    assert bob.occupants(ROOM) == {"bob", "Matrix"}  # nobody left behind, nobody twice


async def _with(user, room_id: str, member: str) -> dict | None:
    members = await user.members(room_id)
    return members if member in members else None


async def _named(user, room_id: str, member: str, name: str) -> bool:
    return (await user.members(room_id)).get(member) == name


async def _without(user, room_id: str, member: str) -> bool:
    return member not in await user.members(room_id)


async def test_a_display_name_taken_in_the_muc_gets_a_suffix_and_a_notice(
        gateway, matrix_user, xmpp_user) -> None:
    """A Matrix user renaming to an XMPP occupant's nick: the MUC refuses (409), the
    gateway retries with a suffix and tells them; nobody appears twice."""
    room = "renames@conference.localhost"
    jin = await matrix_user("Jin")
    room_id = await jin.join("#_xmpp_renames_conference.localhost:localhost")
    bob = await xmpp_user("bob")
    await bob.join(room, "bob")
    await eventually(lambda: "Jin" in bob.occupants(room))

    # fullwidth: the gateway sees a free nick, Prosody's resourceprep makes it "bob"
    await jin.set_displayname("\uff42\uff4f\uff42")
    notice = await jin.wait_message(room_id, lambda e: e["content"]["msgtype"] == "m.notice")
    assert jin.user_id in notice["content"]["body"] and "'bob (2)'" in notice["content"]["body"]
    assert bob.occupants(room) == {"bob", "bob (2)", "Matrix"}

    await jin.set_displayname("bob")  # a nick the gateway knows is taken: the same suffix
    await jin.send(room_id, "still me")
    got = await bob.wait_message(lambda m: m["body"] == "still me")
    assert got["from"].resource == "bob (2)"
    assert bob.occupants(room) == {"bob", "bob (2)", "Matrix"}
