"""Replies: XEP-0461 message replies ↔ Matrix ``m.relates_to.m.in_reply_to``.

XMPP → Matrix: the quoted fallback the sender marked with XEP-0428 is cut from
the body (and the XHTML-IM body, which would repeat it, is dropped). Matrix →
XMPP: a Matrix reply fallback (``> <@user> …`` lines, ``<mx-reply>``) is cut,
and a XEP-0461 reference plus a marked quote of the original (``> nick:``) is
added for XMPP clients that do not show replies.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from slixmpp import JID

from servletkit_xmpp_gateway import edits, msgids, names

if TYPE_CHECKING:
    from servletkit.store.plugin import PluginStore
    from servletkit_xmpp_gateway.core import BridgeCore, Kind

REPLY_NS = "urn:xmpp:reply:0"
_MX_REPLY = re.compile(r"^\s*<mx-reply>.*?</mx-reply>", re.DOTALL)


def read(msg: Any) -> tuple[str | None, str]:
    """The id the XMPP ``msg`` replies to (if it is a reply) and its body without the
    quoted fallback."""
    reply = msg.xml.find(f"{{{REPLY_NS}}}reply")
    if reply is None or not reply.get("id"):
        return None, str(msg["body"])
    return reply.get("id"), str(msg["reply"].strip_fallback_content())


async def content_in(store: PluginStore, scope: str, reply: str | None,
                     content: dict[str, Any]) -> dict[str, Any]:
    """Matrix content for an XMPP message replying to XMPP id ``reply`` in ``scope``."""
    if reply is None:
        return content
    target = await msgids.event_for(store, scope, reply)
    if target is None:
        return content
    original = await edits.original_of(store, target)
    return content | {"m.relates_to": {"m.in_reply_to": {"event_id": original}}}


def in_reply_to(content: dict[str, Any]) -> str | None:
    """The event a Matrix message replies to, if it is a reply."""
    relation = content.get("m.relates_to")
    reply = relation.get("m.in_reply_to") if isinstance(relation, dict) else None
    target = reply.get("event_id") if isinstance(reply, dict) else None
    return target if isinstance(target, str) else None


def without_fallback(content: dict[str, Any]) -> dict[str, Any]:
    """Matrix reply ``content`` without the quoted fallback it may carry."""
    if in_reply_to(content) is None:
        return content
    stripped = dict(content)
    body = content.get("body")
    if isinstance(body, str) and body.startswith(">"):
        lines = body.split("\n")
        while lines and lines[0].startswith(">"):
            lines.pop(0)
        if lines and not lines[0]:
            lines.pop(0)
        stripped["body"] = "\n".join(lines)
    html = content.get("formatted_body")
    if isinstance(html, str):
        stripped["formatted_body"] = _MX_REPLY.sub("", html, count=1)
    return stripped


async def out(bridge: BridgeCore, msg: Any, op: dict[str, Any], mtype: Kind) -> None:
    """Make ``msg`` (carrying Matrix event ``op``) a XEP-0461 reply if the event is a
    reply to a message that crossed the gateway, with a marked quote of that message."""
    target = in_reply_to(op["content"])
    if target is None:
        return
    ref = await msgids.reference(bridge.store, target, mtype == "groupchat")
    if ref is None:
        return
    author, nick = None, None
    try:
        quoted = await bridge.reader(op).get_event(op["room_id"], target)
    except Exception as exc:
        bridge.log.info("cannot read %s to quote it: %s", target, exc)
        quoted = {}
    if "sender" in quoted:
        author, nick = _author(bridge, op, quoted["sender"])
    msg["reply"]["id"] = ref
    if author is not None:
        msg["reply"]["to"] = author
    body = without_fallback(quoted.get("content") or {}).get("body")
    if isinstance(body, str) and body:
        msg["reply"].add_quoted_fallback(body, nick)


def _author(bridge: BridgeCore, op: dict[str, Any], sender: str) -> tuple[str | None, str]:
    """The XMPP address of Matrix user ``sender`` where ``op`` is said, and their nick."""
    localpart = sender[1:].split(":", 1)[0]
    address = names.xmpp_address_of(bridge.config.user_prefix, localpart)
    if op["op"] == "dm":
        if address is not None and bridge.is_ours(sender):
            return address, address
        jid = names.puppet_jid(sender, bridge.server_name, bridge.config.component_jid)
        return jid, localpart
    muc = op["muc"]
    if address is not None and bridge.is_ours(sender):
        if address.startswith(f"{muc}/"):
            return address, JID(address).resource
        for nick, jid in bridge.occupants.get(muc, {}).items():
            if jid == address:
                return f"{muc}/{nick}", nick
        return None, address
    puppet = bridge.puppets.get((muc, sender))
    return (f"{muc}/{puppet}", puppet) if puppet else (None, localpart)
