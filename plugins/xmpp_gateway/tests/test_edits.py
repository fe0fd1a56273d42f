"""Edits: XEP-0308 corrections ↔ Matrix m.replace (real Synapse, real Prosody)."""

from __future__ import annotations

import pytest

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "edits@conference.localhost"
ALIAS = "#_xmpp_edits_conference.localhost:localhost"


def _edit(event_id: str, body: str) -> dict[str, object]:
    return {"msgtype": "m.text", "body": f"* {body}",
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id}}


async def test_matrix_edits_arrive_as_corrections_of_the_original(gateway, matrix_user,
                                                                  xmpp_user) -> None:
    """Each Matrix edit is a correction naming the first message's id; the newest last."""
    hana = await matrix_user("Hana")
    room_id = await hana.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Hana" in human.occupants(ROOM))

    first = await hana.send(room_id, "helo wrld")
    original = await human.wait_message(lambda m: m["body"] == "helo wrld")
    await hana.send_event(room_id, "m.room.message", _edit(first, "hello wrld"))
    await hana.send_event(room_id, "m.room.message", _edit(first, "hello world"))

    second = await human.wait_message(lambda m: m["body"] == "hello world")
    edits = human.messages(lambda m: m["replace"]["id"] == original["id"])
    assert [m["body"] for m in edits] == ["hello wrld", "hello world"]  # no "* " fallback
    assert second["from"].resource == "Hana" and second["id"] != original["id"]


async def test_xmpp_corrections_become_edits_of_the_original(gateway, matrix_user,
                                                             xmpp_user) -> None:
    """A correction is an m.replace of the first event, also when it corrects a correction."""
    ivan = await matrix_user("Ivan")
    room_id = await ivan.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    first_id = human.say(ROOM, "teh cat")
    first = await ivan.wait_message(room_id, lambda e: e["content"]["body"] == "teh cat")

    correction = human.compose(ROOM, "the cat")
    correction["replace"]["id"] = first_id
    correction.send()
    edit = await ivan.wait_message(room_id, lambda e: e["content"]["body"] == "* the cat")
    assert edit["content"]["m.relates_to"] == {"rel_type": "m.replace",
                                               "event_id": first["event_id"]}
    assert edit["content"]["m.new_content"] == {"msgtype": "m.text", "body": "the cat"}

    # some clients correct the correction: the edit still names the original
    again = human.compose(ROOM, "the black cat")
    again["replace"]["id"] = correction["id"]
    again.send()
    edit = await ivan.wait_message(room_id, lambda e: e["content"]["body"] == "* the black cat")
    assert edit["content"]["m.relates_to"]["event_id"] == first["event_id"]

    # the server applies the newest edit to the original
    shown = await ivan.call("GET", f"/rooms/{room_id}/event/{first['event_id']}")
    replaced = shown["unsigned"]["m.relations"]["m.replace"]
    assert replaced["event_id"] == edit["event_id"]
