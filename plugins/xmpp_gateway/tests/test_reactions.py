"""Reactions: XEP-0444 sets ↔ one m.reaction per key (real Synapse, real Prosody)."""

from __future__ import annotations

import pytest

from servletkit.testing.waiting import eventually

pytestmark = pytest.mark.integration

ROOM = "reactions@conference.localhost"
ALIAS = "#_xmpp_reactions_conference.localhost:localhost"
HUMAN = "@_xmpp_human=40localhost:localhost"


def _reaction(event_id: str, key: str) -> dict[str, object]:
    return {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}


async def test_matrix_reactions_arrive_as_the_whole_set(gateway, matrix_user,
                                                        xmpp_user) -> None:
    """Each Matrix reaction, and each redaction of one, sends the reactor's new set."""
    kim = await matrix_user("Kim")
    room_id = await kim.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Kim" in human.occupants(ROOM))
    said = await human.muc_id(ROOM, human.say(ROOM, "react to this"))
    target = await kim.wait_message(room_id, lambda e: e["content"]["body"] == "react to this")

    def sets() -> list[set[str]]:
        return [m["reactions"].get_values(all_chars=True)
                for m in human.messages(lambda m: m["reactions"]["id"] == said)]

    thumbs = await kim.send_event(room_id, "m.reaction", _reaction(target["event_id"], "👍"))
    await eventually(lambda: len(sets()) == 1)
    await kim.send_event(room_id, "m.reaction", _reaction(target["event_id"], "❤️"))
    await eventually(lambda: len(sets()) == 2)
    await kim.redact(room_id, thumbs)
    await eventually(lambda: len(sets()) == 3)
    assert sets() == [{"👍"}, {"👍", "❤️"}, {"❤️"}]
    assert all(m["from"].resource == "Kim"
               for m in human.messages(lambda m: m["reactions"]["id"] == said))


async def test_xmpp_sets_become_reactions_and_dropped_ones_are_redacted(
        gateway, matrix_user, xmpp_user) -> None:
    """A set adds the reactions it gains and redacts those it drops; the sets are kept
    in the plugin's store, not only in memory."""
    lena = await matrix_user("Lena")
    room_id = await lena.join(ALIAS)
    human = await xmpp_user("human")
    await human.join(ROOM, "human")
    await eventually(lambda: "Lena" in human.occupants(ROOM))
    sent = await lena.send(room_id, "party tonight")
    got = await human.wait_message(lambda m: m["body"] == "party tonight")
    got_id = await human.muc_id(ROOM, got["id"])  # learnt by the gateway from its echo

    def react(*keys: str) -> None:
        msg = human.compose(ROOM)
        msg["reactions"]["id"] = got_id
        msg["reactions"].set_values(keys, all_chars=True)
        msg.send()

    async def reactions() -> dict[str, str]:
        return {e["content"]["m.relates_to"]["key"]: e["event_id"]
                for e in await lena.events(room_id)
                if e["type"] == "m.reaction" and e["sender"] == HUMAN and e["content"]}

    react("🎉", "👀")
    both = await eventually(lambda: _when(reactions(), lambda r: set(r) == {"🎉", "👀"}))
    assert await gateway.plugin_data(f"react/{sent}/{HUMAN}") == both

    react("👀")
    left = await eventually(lambda: _when(reactions(), lambda r: set(r) == {"👀"}))
    assert left["👀"] == both["👀"]  # kept, not sent again
    party = next(e for e in await lena.events(room_id) if e["event_id"] == both["🎉"])
    assert party["unsigned"]["redacted_because"]["sender"] == HUMAN
    assert await gateway.plugin_data(f"react/{sent}/{HUMAN}") == left

    react()
    await eventually(lambda: _when(reactions(), lambda r: r == {}))
    assert await gateway.plugin_data(f"react/{sent}/{HUMAN}") is None


async def _when(found, check):
    """``found``'s value if ``check`` accepts it (an empty one as ``True``), else ``None``."""
    value = await found
    return (value or True) if check(value) else None
