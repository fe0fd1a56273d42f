"""Reactions: XEP-0444 ↔ Matrix ``m.reaction``.

XMPP sends each person's whole set of reactions to a message; Matrix has one
event per reaction. The gateway keeps the sets in the plugin's store (they
survive restarts), under ``react/<event id>/<user id>`` → ``{key: reaction event
id}`` for every person on either side, and ``reaction/<reaction event id>`` →
``{"target", "user", "key"}`` for Matrix users' reactions (their redaction
takes the key out of the set). A new XMPP set adds the Matrix reactions it
gained and redacts those it dropped; a Matrix reaction or its redaction sends
the person's new set to XMPP.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from slixmpp import JID

from servletkit_xmpp_gateway import edits, msgids

if TYPE_CHECKING:
    from servletkit_xmpp_gateway.core import BridgeCore, Kind

REACTIONS_NS = "urn:xmpp:reactions:0"
HINTS_NS = "urn:xmpp:hints"


def read(msg: Any) -> dict[str, Any] | None:
    """The reactions an XMPP message sets (``react``: the message's id, ``keys``)."""
    found = msg.xml.find(f"{{{REACTIONS_NS}}}reactions")
    if found is None or not found.get("id"):
        return None
    keys = {r.text for r in found.findall(f"{{{REACTIONS_NS}}}reaction") if r.text}
    return {"react": found.get("id"), "keys": sorted(keys)}


async def apply_in(bridge: BridgeCore, room_id: str, user: str, scope: str,
                   op: dict[str, Any], txn: str) -> None:
    """Make ``user``'s Matrix reactions to the message match the XMPP set in ``op``."""
    target = await msgids.event_for(bridge.store, scope, op["react"])
    if target is None:
        return
    target = await edits.original_of(bridge.store, target)
    key = f"react/{target}/{user}"
    have: dict[str, str] = dict(await bridge.store.get(key) or {})
    wanted = set(op["keys"])
    client = bridge.hs.as_user(user)
    for emoji in sorted(wanted - set(have)):
        have[emoji] = await client.send_event(room_id, "m.reaction", {"m.relates_to": {
            "rel_type": "m.annotation", "event_id": target, "key": emoji}},
            txn_id=_txn(txn, "react", emoji))
    for emoji in sorted(set(have) - wanted):
        await client.redact(room_id, have.pop(emoji), txn_id=_txn(txn, "unreact", emoji))
    await _keep(bridge, key, have)


async def out(bridge: BridgeCore, op: dict[str, Any], to: JID, sender: JID, mtype: Kind) -> None:
    """A Matrix user reacted: send their new set of reactions to that message."""
    relation = op["content"].get("m.relates_to") or {}
    if relation.get("rel_type") != "m.annotation" or not isinstance(relation.get("key"), str):
        return
    target = await edits.original_of(bridge.store, str(relation.get("event_id")))
    key = f"react/{target}/{op['user']}"
    have: dict[str, str] = dict(await bridge.store.get(key) or {})
    have[relation["key"]] = op["event_id"]
    await bridge.store.put(key, have)
    await bridge.store.put(f"reaction/{op['event_id']}", {
        "target": target, "user": op["user"], "key": relation["key"]})
    await _send_set(bridge, target, set(have), to, sender, mtype)


async def withdraw(bridge: BridgeCore, redacted: str, to: JID, mtype: Kind) -> bool:
    """If ``redacted`` is a Matrix user's reaction, send their set without it; whether
    it was one."""
    info = await bridge.store.get(f"reaction/{redacted}")
    if info is None:
        return False
    await bridge.store.delete(f"reaction/{redacted}")
    key = f"react/{info['target']}/{info['user']}"
    have: dict[str, str] = dict(await bridge.store.get(key) or {})
    if have.get(info["key"]) == redacted:
        del have[info["key"]]
    await _keep(bridge, key, have)
    await _send_set(bridge, info["target"], set(have), to,
                    bridge.puppet_full_jid(info["user"]), mtype)
    return True


async def _keep(bridge: BridgeCore, key: str, have: dict[str, str]) -> None:
    if have:
        await bridge.store.put(key, have)
    else:
        await bridge.store.delete(key)


async def _send_set(bridge: BridgeCore, target: str, keys: set[str], to: JID, sender: JID,
                    mtype: Kind) -> None:
    ref = await msgids.reference(bridge.store, target, mtype == "groupchat")
    if ref is None:
        return  # a reaction to something that never crossed the gateway
    msg = bridge.stream(sender).make_message(mto=to, mfrom=sender, mtype=mtype)
    msg["reactions"]["id"] = ref
    msg["reactions"].set_values(sorted(keys), all_chars=True)
    ET.SubElement(msg.xml, f"{{{HINTS_NS}}}store")
    msg.send()


def _txn(base: str, what: str, key: str) -> str:
    return f"{base}-{what}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
