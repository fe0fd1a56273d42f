"""Redactions: Matrix ``m.room.redaction`` ↔ XEP-0424 message retraction.

Only a message's own author retracts it: an XMPP retraction becomes a redaction
by the author's virtual user when the event is theirs, and a Matrix user's
redaction of their own bridged message becomes a retraction from their puppet.
Redacting someone else's message in a group chat (a Matrix moderator) is XEP-0425
moderation (:mod:`~servletkit_xmpp_gateway.moderation`); in a DM it is logged, not
carried. A redacted
reaction is not a retraction: the reactor's new set goes out instead
(:func:`servletkit_xmpp_gateway.reactions.withdraw`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from slixmpp import JID

from servletkit_xmpp_gateway import msgids, reactions

if TYPE_CHECKING:
    from servletkit_xmpp_gateway.core import BridgeCore, Kind

RETRACT_NS = "urn:xmpp:message-retract:1"
FALLBACK_NS = "urn:xmpp:fallback:0"
FALLBACK = "This person retracted a previous message, but your client does not support it."


def read(msg: Any) -> str | None:
    """The id of the message that XMPP ``msg`` retracts, if it is a retraction."""
    retract = msg.xml.find(f"{{{RETRACT_NS}}}retract")
    return None if retract is None else retract.get("id") or None


async def apply_in(bridge: BridgeCore, room_id: str, user: str, scope: str,
                   op: dict[str, Any], txn: str) -> None:
    """Redact the Matrix event of the retracted message, if ``user`` sent it."""
    target = await msgids.event_for(bridge.store, scope, op["retract"])
    if target is None:
        return
    client = bridge.hs.as_user(user)
    event = await client.get_event(room_id, target)
    if event.get("sender") != user:
        bridge.log.info("%s tried to retract %s, which is not theirs", user, target)
        return
    await client.redact(room_id, target, txn_id=txn)


async def out(bridge: BridgeCore, op: dict[str, Any], to: JID, sender: JID, mtype: Kind) -> None:
    """A Matrix user redacted an event: retract the XMPP message if it is their own."""
    redacted = op.get("redacts")
    if not isinstance(redacted, str) or await reactions.withdraw(bridge, redacted, to, mtype):
        return
    ref = await msgids.reference(bridge.store, redacted, mtype == "groupchat")
    if ref is None:
        return  # never crossed the gateway
    event = await bridge.reader(op).get_event(op["room_id"], redacted)
    if event.get("sender") != op["user"]:
        if mtype == "groupchat":
            await bridge.moderate_out(op, redacted)
        else:  # no moderators in a 1:1 chat
            bridge.log.info("%s redacted %s by %s: moderation is not carried to XMPP",
                            op["user"], redacted, event.get("sender"))
        return
    msg = bridge.stream(sender).make_message(mto=to, mfrom=sender, mtype=mtype, mbody=FALLBACK)
    msg["retract"]["id"] = ref
    ET.SubElement(msg.xml, f"{{{FALLBACK_NS}}}fallback").set("for", RETRACT_NS)
    ET.SubElement(msg.xml, f"{{{reactions.HINTS_NS}}}store")
    msg.send()
