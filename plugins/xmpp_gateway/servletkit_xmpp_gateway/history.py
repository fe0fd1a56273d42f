"""History: when a Matrix room and a MUC are first bridged, each side gets the other's
recent past.

XMPP → Matrix: the gateway asks the MUC's archive (a XEP-0313 MAM query from its
own occupant JID) for the last ``history_backfill`` messages and posts them in
the Matrix room as their senders' virtual users, with the archive's timestamps
(the appservice's ``?ts=``). Messages the message-id map already knows (the
gateway's own, or posted before) are skipped, so nothing appears twice.

Matrix → XMPP: when the room's ``m.room.history_visibility`` is ``shared`` or
``world_readable`` (what a new member may read anyway; nothing for ``invited``
or ``joined``), its last ``history_backfill`` messages, read as the gateway's
bot, are sent into the MUC by their senders' puppets with a XEP-0203 ``delay``
naming the Matrix timestamp (the puppets of senders who have left the room leave
the MUC again after). The MUC archives them like any message, so XMPP
clients get them in the MUC's history on join and from MAM queries: the MUC
stays the one archive XMPP clients ask, and nothing here answers queries.

It runs once per bridge: ``history/<muc>`` is :data:`PENDING` from the bridging
until the backfill is queued, so a restart does not repeat it.
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from servletkit.hooks.events import Event
from servletkit.wires.appservice.homeserver import q
from servletkit_xmpp_gateway import msgids
from servletkit_xmpp_gateway.inbound import fields_of

if TYPE_CHECKING:
    from servletkit_xmpp_gateway.core import BridgeCore

PENDING = "pending"
DELAY_NS = "urn:xmpp:delay"
MUC_USER_NS = "http://jabber.org/protocol/muc#user"
VISIBLE = ("shared", "world_readable")  # history visibilities whose past XMPP may see
MAM_TIMEOUT = 30


async def from_xmpp(bridge: BridgeCore, muc: str, count: int) -> list[dict[str, Any]]:
    """The inbound operations of the last ``count`` archived messages of ``muc`` the
    gateway has not carried yet, oldest first."""
    ops = []
    for result in await _archive(bridge, muc, count):
        forwarded = result["mam_result"]["forwarded"]
        msg, stamp = forwarded["stanza"], forwarded["delay"]["stamp"]
        nick = msg["from"].resource
        carried = fields_of(msg)
        if carried is None or not nick or bridge.ours_in_muc(muc, nick, JID()):
            continue
        origin_id, _ = msgids.sid_ids(msg, muc)
        stanza_id = result["mam_result"]["id"]
        if any([await msgids.event_for(bridge.store, muc, known)
                for known in (stanza_id, origin_id, msg["id"]) if known]):
            continue
        item = msg.xml.find(f"{{{MUC_USER_NS}}}x/{{{MUC_USER_NS}}}item")
        real = JID(item.get("jid", "")) if item is not None else JID()
        ops.append({"op": "msg", "muc": muc, "nick": nick,
                    "address": real.bare or f"{muc}/{nick}", **carried, "id": msg["id"] or "",
                    "origin_id": origin_id, "stanza_id": stanza_id,
                    "ts": int(stamp.timestamp() * 1000) if stamp else None})
    return ops


async def _archive(bridge: BridgeCore, muc: str, count: int) -> list[Any]:
    """The MAM results of the last ``count`` messages in ``muc``'s archive, oldest first.

    One query of one page (RSM ``<before/>``: the newest), its results collected by a
    handler of our own: slixmpp's MAM helpers match results with an XML mask in the
    client namespace, which never matches on a component stream.
    """
    assert bridge.xmpp is not None
    iq = bridge.xmpp.make_iq_set(ito=JID(muc), ifrom=JID(bridge.bot_jid))
    iq["mam"]["queryid"] = iq["id"]
    iq["mam"]["rsm"]["max"] = str(count)
    iq["mam"]["rsm"]["before"] = True
    results: list[Any] = []
    name = f"mam-history-{iq['id']}"
    bridge.xmpp.register_handler(Callback(
        name, StanzaPath(f"message/mam_result@queryid={iq['id']}"), results.append))
    try:
        await iq.send(timeout=MAM_TIMEOUT)  # type: ignore[no-untyped-call]  # results first
    finally:
        bridge.xmpp.remove_handler(name)
    return results


async def from_matrix(bridge: BridgeCore, room_id: str, count: int) -> list[Event]:
    """The last ``count`` messages of ``room_id`` XMPP may see (its history visibility
    is shared or world-readable) that Matrix users sent, oldest first."""
    try:
        visibility = (await bridge.hs.get_state(room_id, "m.room.history_visibility")
                      ).get("history_visibility", "shared")
    except Exception as exc:  # no such state event: the spec's default
        if getattr(exc, "errcode", None) != "M_NOT_FOUND":
            raise
        visibility = "shared"
    if visibility not in VISIBLE:
        bridge.log.info("not sending the history of %s to XMPP: its history visibility "
                        "is %r", room_id, visibility)
        return []
    answer = await bridge.hs.request(
        "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages",
        params={"dir": "b", "limit": count, "filter": '{"types": ["m.room.message"]}'})
    events = [Event.from_json(e) for e in reversed(answer.get("chunk", []))]
    return [e for e in events if e.content and not bridge.is_ours(e.sender)]


async def departed(bridge: BridgeCore, room_id: str,
                   senders: set[str]) -> dict[str, str | None]:
    """Those of ``senders`` no longer in ``room_id`` → their display names (from their
    profiles): their puppets join the MUC to say their past messages and leave again."""
    joined = await bridge.hs.request(
        "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/joined_members")
    gone: dict[str, str | None] = {}
    for user in sorted(senders - set(joined.get("joined", {}))):
        try:
            gone[user] = (await bridge.hs.get_profile(user)).get("displayname")
        except Exception:  # a private or vanished profile: the nick is the localpart
            gone[user] = None
    return gone


def add_delay(msg: Any, ts: int, by: str) -> None:
    """Mark XMPP message ``msg`` as said at ``ts`` (ms since the epoch; XEP-0203)."""
    stamp = datetime.datetime.fromtimestamp(ts / 1000, datetime.UTC)
    delay = ET.SubElement(msg.xml, f"{{{DELAY_NS}}}delay")
    delay.set("from", by)
    delay.set("stamp", stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
