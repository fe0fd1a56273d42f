"""Prosody restarts mid-conversation: nothing is lost, nothing arrives twice."""

from __future__ import annotations

import asyncio

import pytest

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "restart@conference.localhost"
ALIAS = "#_xmpp_restart_conference.localhost:localhost"


async def test_prosody_restart_loses_and_doubles_nothing(gateway, matrix_user,
                                                         xmpp_user) -> None:
    """Messages sent from Matrix while Prosody is down reach the MUC once, after it is back."""
    gina = await matrix_user("Gina")
    room_id = await gina.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Gina" in human.occupants(ROOM))
    await gina.send(room_id, "before the restart")
    await human.wait_message(lambda m: m["body"] == "before the restart")

    gateway.prosody.stop()
    await gina.send(room_id, "while down 1")
    await gina.send(room_id, "while down 2", html="while <b>down</b> 2")
    await asyncio.sleep(0.5)  # the gateway keeps them; it cannot reach Prosody
    gateway.prosody.start()

    again = await xmpp_user("human")  # the old session died with the server
    await again.join(ROOM, "human", history=True)
    for body in ("while down 1", "while down 2"):
        await again.wait_message(lambda m, body=body: m["body"] == body, within=20)
    await eventually(lambda: "Gina" in again.occupants(ROOM))  # the puppet is back
    again.say(ROOM, "after the restart")
    await gina.wait_message(room_id, lambda e: e["content"]["body"] == "after the restart")

    await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
    received = [m["body"] for m in again.messages(lambda m: m["type"] == "groupchat")]
    assert received.count("while down 1") == 1 and received.count("while down 2") == 1
    # Prosody keeps an occupied room's history over a restart: what was sent before may
    # come as history, but once
    assert received.count("before the restart") <= 1
    assert len(human.messages(lambda m: m["body"] == "before the restart")) == 1
    bodies = [e["content"]["body"] for e in await gina.messages(room_id)]
    assert bodies.count("after the restart") == 1
    assert bodies.count("while down 1") == 1 and bodies.count("while down 2") == 1


async def test_synapse_down_delays_xmpp_messages_and_loses_none(gateway, matrix_user,
                                                                xmpp_user) -> None:
    """What XMPP says while the homeserver is down reaches Matrix once, in order, after."""
    room, alias = "outage@conference.localhost", "#_xmpp_outage_conference.localhost:localhost"
    jo = await matrix_user("Jo")
    room_id = await jo.join(alias)
    human = await xmpp_user("human")
    await human.join(room, "human")
    await eventually(lambda: "Jo" in human.occupants(room))

    gateway.synapse.stop()
    human.say(room, "during the outage 1")
    human.say(room, "during the outage 2")
    await asyncio.sleep(1.0)  # the gateway keeps them and retries
    await asyncio.to_thread(lambda: (gateway.synapse.spawn(), gateway.synapse.wait_ready(60)))

    await jo.wait_message(room_id, lambda e: e["content"]["body"] == "during the outage 2",
                          within=30)
    await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
    bodies = [e["content"]["body"] for e in await jo.messages(room_id)]
    assert [b for b in bodies if b.startswith("during the outage")] == [
        "during the outage 1", "during the outage 2"]
