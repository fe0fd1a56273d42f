"""History crossing both ways: the MUC's history and archive (MAM) hold what Matrix users
said, and a newly bridged room and MUC each get the other's recent past, once."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from servletkit_xmpp_gateway.local import COMPONENT, MUC
from slixmpp import JID

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

DELAY = "{urn:xmpp:delay}delay"


async def archive(user: Any, room: str) -> list[Any]:
    """What a MAM (XEP-0313) query of ``room`` by XMPP ``user`` returns, oldest first."""
    found = [m["mam_result"]["forwarded"]["stanza"] async for m in
             user.plugin["xep_0313"].iterate(jid=JID(room), reverse=True, rsm={"max": 50},
                                              total=50)]
    return list(reversed(found))


def said_at(msg: Any) -> float | None:
    """The time (seconds) the gateway's XEP-0203 delay gives ``msg``, if it has one."""
    for delay in msg.xml.findall(DELAY):
        if delay.get("from") == COMPONENT:
            return _seconds(delay.get("stamp"))
    return None


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_matrix_messages_are_in_the_mucs_history_and_archive(gateway, matrix_user,
                                                                   xmpp_user) -> None:
    """An XMPP user joining later gets what Matrix users said, under their nicks, in the
    MUC's join history and from a MAM query of the MUC."""
    room = f"livehist@{MUC}"
    hana = await matrix_user("Hana")
    room_id = await hana.join(f"#_xmpp_livehist_{MUC}:localhost")
    human = await xmpp_user("human")
    await human.join(room, "human")
    for body in ("live one", "live two"):
        await hana.send(room_id, body)
        await human.wait_message(lambda m, body=body: m["body"] == body)

    bob = await xmpp_user("bob")
    await bob.join(room, "bob", history=True)
    history = [await bob.wait_message(lambda m, b=b: m["body"] == b and m.get_plugin(
        "delay", check=True) is not None) for b in ("live one", "live two")]
    assert [m["from"].resource for m in history] == ["Hana", "Hana"]
    archived = [(m["from"].resource, m["body"]) for m in await archive(bob, room)]
    assert ("Hana", "live one") in archived and ("Hana", "live two") in archived


async def test_a_mucs_past_reaches_a_newly_bridged_room_once(gateway, matrix_user,
                                                            xmpp_user) -> None:
    """A MUC with history bridged to a new Matrix room: its archived messages arrive as
    the XMPP user's virtual user with their original times, and a gateway restart posts
    none of them again."""
    room = f"pastmuc@{MUC}"
    human = await xmpp_user("human")
    await human.join(room, "human")
    for body in ("said before the bridge 1", "said before the bridge 2"):
        msg_id = human.say(room, body)
        await human.wait_message(lambda m, i=msg_id: m["id"] == i)
    said = time.time()
    await asyncio.sleep(1.5)  # so that the original times differ from the bridging's

    ines = await matrix_user("Ines")
    room_id = await ines.join(f"#_xmpp_pastmuc_{MUC}:localhost")
    second = await ines.wait_message(
        room_id, lambda e: e["content"]["body"] == "said before the bridge 2")
    first = await ines.wait_message(
        room_id, lambda e: e["content"]["body"] == "said before the bridge 1")
    assert first["sender"] == second["sender"] and first["sender"].startswith("@_xmpp_")
    assert first["origin_server_ts"] <= second["origin_server_ts"] <= said * 1000 + 500

    await asyncio.to_thread(gateway.restart)
    await eventually(lambda: "human" in (human.occupants(room) or {}))
    human.say(room, "said after the restart")
    await ines.wait_message(room_id, lambda e: e["content"]["body"] == "said after the restart",
                            within=30)
    await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
    bodies = [e["content"]["body"] for e in await ines.messages(room_id)]
    assert [b for b in bodies if b.startswith("said")] == [
        "said before the bridge 1", "said before the bridge 2", "said after the restart"]


async def test_a_matrix_rooms_past_reaches_the_muc_within_its_history_visibility(
        gateway, matrix_user, xmpp_user) -> None:
    """An existing Matrix room bridged by the config: with history visibility ``shared``
    its past messages go to the MUC under their senders' nicks with their times (in the
    join history and the archive); with ``joined`` none do."""
    assert gateway.synapse is not None
    bot = httpx.AsyncClient(base_url=gateway.synapse.url, timeout=30,
                            headers={"Authorization": "Bearer xmpp-as-token"})
    rooms: dict[str, str] = {}
    async with bot:
        for name, visibility in (("mxshared", "shared"), ("mxjoined", "joined")):
            answer = await bot.post("/_matrix/client/v3/createRoom", json={
                "preset": "public_chat", "room_alias_name": f"_xmpp_{name}_{MUC}",
                "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                   "content": {"history_visibility": visibility}}]})
            assert answer.is_success, answer.text
            rooms[name] = answer.json()["room_id"]
    ivy, jon = await matrix_user("Ivy"), await matrix_user("Jon")
    await jon.join(rooms["mxshared"])
    await jon.send(rooms["mxshared"], "mxshared by one who left")
    await jon.call("POST", f"/rooms/{rooms['mxshared']}/leave", {})
    sent: dict[str, float] = {}
    for name, room_id in rooms.items():
        await ivy.join(room_id)
        for n in (1, 2):
            event_id = await ivy.send(room_id, f"{name} past {n}")
            event = await ivy.call("GET", f"/rooms/{room_id}/event/{event_id}")
            sent[f"{name} past {n}"] = event["origin_server_ts"] / 1000
    await asyncio.sleep(1.5)  # so that the original times differ from the bridging's

    await asyncio.to_thread(gateway.restart, f"mxshared@{MUC}", f"mxjoined@{MUC}")
    bob = await xmpp_user("bob")
    await bob.join(f"mxshared@{MUC}", "bob", history=True)
    for body in ("mxshared past 1", "mxshared past 2"):
        got = await bob.wait_message(lambda m, b=body: m["body"] == b, within=30)
        assert got["from"].resource == "Ivy"
        assert said_at(got) == pytest.approx(sent[body], abs=0.01)
    gone = await bob.wait_message(lambda m: m["body"] == "mxshared by one who left")
    assert gone["from"].resource == "Jon"
    await eventually(lambda: "Jon" not in bob.occupants(f"mxshared@{MUC}"))  # left again
    assert "Ivy" in bob.occupants(f"mxshared@{MUC}")
    archived = [m["body"] for m in await archive(bob, f"mxshared@{MUC}")]
    assert archived.count("mxshared past 1") == 1 and archived.count("mxshared past 2") == 1

    carol = await xmpp_user("carol")
    await carol.join(f"mxjoined@{MUC}", "carol", history=True)
    await asyncio.sleep(2.0)  # time for the history, if there were any
    assert not carol.messages(lambda m: "past" in (m["body"] or ""))
    assert not [m for m in await archive(carol, f"mxjoined@{MUC}") if "past" in m["body"]]
