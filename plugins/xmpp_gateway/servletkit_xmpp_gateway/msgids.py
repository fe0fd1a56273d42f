"""The message-id map: a Matrix event ↔ the ids of the same message on XMPP.

Kept in the plugin's store for what refers to an earlier message (edits,
replies, reactions, redactions). ``scope`` is where the message was said: the
MUC's bare JID, or the XMPP address of a DM. Keys:

``msg/m/<event_id>``
    ``{"scope": ..., "id": ..., "origin_id": ..., "stanza_id": ...}``: the
    XMPP message's ``id`` attribute, its XEP-0359 ``origin-id`` and the
    ``stanza-id`` the server gave it (``None`` when unknown).
``msg/x/<scope>/<xmpp id>``
    the event ID, for each of those ids that is known (they are unique
    within a scope: XEP-0359 asks senders and servers for unique ids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from servletkit.store.plugin import PluginStore

SID_NS = "urn:xmpp:sid:0"


async def remember(store: PluginStore, event_id: str, scope: str, *, id: str | None,
                   origin_id: str | None = None, stanza_id: str | None = None) -> None:
    """Record that Matrix ``event_id`` and these XMPP ids in ``scope`` are one message."""
    ids = {"id": id, "origin_id": origin_id, "stanza_id": stanza_id}
    await store.put(f"msg/m/{event_id}", {"scope": scope, **ids})
    for value in {v for v in ids.values() if v}:
        await store.put(f"msg/x/{scope}/{value}", event_id)


async def add_stanza_id(store: PluginStore, scope: str, xmpp_id: str, stanza_id: str) -> None:
    """Record the ``stanza-id`` a MUC gave the message ``xmpp_id`` the gateway sent (its
    reflection says it), so that references to it by that id are understood."""
    event_id = await event_for(store, scope, xmpp_id)
    ids = None if event_id is None else await xmpp_ids_for(store, event_id)
    if event_id is None or ids is None or ids.get("stanza_id") == stanza_id:
        return
    await remember(store, event_id, scope, id=ids.get("id"), origin_id=ids.get("origin_id"),
                   stanza_id=stanza_id)


async def event_for(store: PluginStore, scope: str, xmpp_id: str) -> str | None:
    """The Matrix event of the XMPP message ``xmpp_id`` (any of its ids) in ``scope``."""
    event_id: str | None = await store.get(f"msg/x/{scope}/{xmpp_id}")
    return event_id


async def xmpp_ids_for(store: PluginStore, event_id: str) -> dict[str, Any] | None:
    """The scope and XMPP ids of Matrix event ``event_id``, or ``None`` if unknown."""
    found: dict[str, Any] | None = await store.get(f"msg/m/{event_id}")
    return found


async def reference(store: PluginStore, event_id: str, groupchat: bool) -> str | None:
    """The id by which an XMPP message refers to Matrix ``event_id`` (a reply, reaction or
    retraction): the MUC's ``stanza-id`` in a group chat when known, else the message's
    own ``id``; ``None`` if the event never crossed the gateway."""
    ids = await xmpp_ids_for(store, event_id)
    if ids is None:
        return None
    found: str | None = (groupchat and ids.get("stanza_id")) or ids.get("id") \
        or ids.get("origin_id")
    return found


def sid_ids(msg: Any, muc: str | None) -> tuple[str | None, str | None]:
    """The XEP-0359 ``origin-id`` of a received message and the ``stanza-id`` that
    ``muc`` (or, for a DM, any server) stamped on it."""
    origin = msg.xml.find(f"{{{SID_NS}}}origin-id")
    stanza_id = None
    for stamp in msg.xml.findall(f"{{{SID_NS}}}stanza-id"):
        if muc is None or stamp.get("by") == muc:
            stanza_id = stamp.get("id")
    return (origin.get("id") if origin is not None else None), stanza_id
