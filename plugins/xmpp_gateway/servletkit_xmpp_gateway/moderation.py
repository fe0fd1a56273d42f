"""Moderation: a moderator's redaction of someone else's message ↔ XEP-0425 (a mixin of
:class:`Bridge`).

Matrix → XMPP: a Matrix user redacts another person's bridged message in a bridged
room (Synapse has checked their power). The MUC is asked to moderate (retract) the
XMPP message, named by the ``stanza-id`` it gave it, first by the redactor's puppet
(a MUC moderator when their power says so, :mod:`~servletkit_xmpp_gateway.roles`),
else by the gateway's own occupant, the room's owner when the gateway made it, with
the Matrix user named in the reason. When neither may, the room gets a notice.

XMPP → Matrix: the MUC announces a moderation to every occupant; the gateway redacts
the Matrix event of that message with the reason, as the moderator's virtual user
when it has the power, else as the gateway's bot (a notice says so when neither may).

Versions: Prosody's ``mod_muc_moderation`` (Debian ``prosody-modules``) speaks
``urn:xmpp:message-moderate:0``, wrapped in XEP-0422 ``apply-to``; the XEP now says
``urn:xmpp:message-moderate:1``. A request uses the one the MUC advertises (disco#info,
asked once per MUC and session); announcements in either form are understood.

No echo: an announcement whose moderator is the gateway or one of its puppets is one
the gateway asked for, and is not relayed back.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout

from servletkit.wires.appservice.homeserver import MatrixRequestError
from servletkit_xmpp_gateway import msgids
from servletkit_xmpp_gateway.core import BridgeCore
from servletkit_xmpp_gateway.redactions import RETRACT_NS

FASTEN_NS = "urn:xmpp:fasten:0"
MODERATE_NS = "urn:xmpp:message-moderate:1"
MODERATE_0_NS = "urn:xmpp:message-moderate:0"
RETRACT_0_NS = "urn:xmpp:message-retract:0"
IQ_TIMEOUT = 10.0


def read(msg: Any) -> dict[str, str] | None:
    """What a MUC's moderation announcement says: the ``stanza_id`` of the moderated
    message, the occupant JID that moderated it (``by``) and the ``reason``."""
    wrapper, version = msg.xml.find(f"{{{FASTEN_NS}}}apply-to"), MODERATE_0_NS
    if wrapper is None:
        wrapper, version = msg.xml.find(f"{{{RETRACT_NS}}}retract"), MODERATE_NS
    moderated = None if wrapper is None else wrapper.find(f"{{{version}}}moderated")
    if moderated is None or not wrapper.get("id"):
        return None
    reason = (moderated.findtext(f"{{{version}}}reason")
              or wrapper.findtext(f"{{{RETRACT_NS}}}reason") or "")
    return {"stanza_id": wrapper.get("id"), "by": moderated.get("by") or "", "reason": reason}


def request(stanza_id: str, reason: str, version: str) -> ET.Element:
    """The payload of the iq that asks a MUC to retract message ``stanza_id``, in the
    form of namespace ``version`` (:data:`MODERATE_NS` or :data:`MODERATE_0_NS`)."""
    if version == MODERATE_0_NS:
        outer = ET.Element(f"{{{FASTEN_NS}}}apply-to", id=stanza_id)
        moderate = ET.SubElement(outer, f"{{{MODERATE_0_NS}}}moderate")
        ET.SubElement(moderate, f"{{{RETRACT_0_NS}}}retract")
    else:
        outer = moderate = ET.Element(f"{{{MODERATE_NS}}}moderate", id=stanza_id)
        ET.SubElement(moderate, f"{{{RETRACT_NS}}}retract")
    if reason:
        ET.SubElement(moderate, f"{{{version}}}reason").text = reason
    return outer


def version_of(features: set[str]) -> str:
    """The XEP-0425 namespace to ask a MUC with these disco#info ``features`` in: the
    current one unless it only advertises the old one."""
    return MODERATE_0_NS if MODERATE_0_NS in features - {MODERATE_NS} else MODERATE_NS


class ModerationRelay(BridgeCore):
    """Moderated messages both ways."""

    moderation_versions: dict[str, str]  # muc → the XEP-0425 namespace it speaks

    # -- Matrix → XMPP -------------------------------------------------------------------

    async def moderate_out(self, op: dict[str, Any], redacted: str) -> None:
        """Matrix user ``op["user"]`` redacted someone else's message ``redacted`` in a
        bridged room: have the MUC retract it for everybody."""
        muc = op["muc"]
        ids = await msgids.xmpp_ids_for(self.store, redacted)
        stanza_id = None if ids is None else ids.get("stanza_id")
        if not stanza_id:
            self.log.info("%s has no stanza-id in %s: cannot moderate it", redacted, muc)
            return
        reason = str(op["content"].get("reason") or "")
        nick = self.puppets.get((muc, op["user"]))
        if nick is not None:
            try:
                await self._moderate(muc, self.puppet_full_jid(op["user"]), stanza_id, reason)
                return
            except IqError:  # not a moderator there: the gateway's occupant asks
                self.log.info("%s may not moderate in %s; the gateway asks", op["user"], muc)
        said = f"{op['user']}: {reason}" if reason else op["user"]
        try:
            await self._moderate(muc, JID(self.bot_jid), stanza_id,
                                 f"moderated in Matrix by {said}")
        except (IqError, IqTimeout) as exc:
            why = "refused" if isinstance(exc, IqError) else "no answer"
            await self.notice(op["room_id"], f"{op['user']}: the message could not be removed "
                              f"in {muc} ({why}: the gateway is not a moderator there).")

    async def _moderate(self, muc: str, sender: JID, stanza_id: str, reason: str) -> None:
        assert self.xmpp is not None
        version = self.moderation_versions.get(muc)
        if version is None:
            info = await self.xmpp.plugin["xep_0030"].get_info(
                jid=JID(muc), ifrom=JID(self.bot_jid), timeout=IQ_TIMEOUT)
            version = version_of(set(info["disco_info"]["features"]))
            self.moderation_versions[muc] = version
        iq = self.xmpp.make_iq_set(ito=JID(muc), ifrom=sender)
        iq.xml.append(request(stanza_id, reason, version))
        await iq.send(timeout=IQ_TIMEOUT)  # type: ignore[no-untyped-call]

    # -- XMPP → Matrix -------------------------------------------------------------------

    def xmpp_moderated(self, msg: Any) -> None:
        """A bridged MUC announces that a moderator retracted a message."""
        sender: JID = msg["from"]
        found = read(msg)
        if (str(msg["to"]) != self.bot_jid or sender.bare not in self.rooms
                or sender.resource or found is None):
            return
        muc, nick = sender.bare, JID(found["by"]).resource
        if self.ours_in_muc(muc, nick, JID()):
            return  # asked for by the gateway: a Matrix redaction already
        address = self.occupants.get(muc, {}).get(nick) if nick else None
        self.queue_in({"op": "moderate", "muc": muc, "nick": nick, "address": address,
                       "stanza_id": found["stanza_id"], "reason": found["reason"],
                       "id": msg["id"] or ""})

    async def apply_moderation(self, op: dict[str, Any]) -> None:
        """Redact the Matrix event of the moderated message, as the moderator's virtual
        user if it may, else as the gateway's bot."""
        muc = op["muc"]
        room_id = self.rooms.get(muc) or await self.store.get(f"room/{muc}")
        target = await msgids.event_for(self.store, muc, op["stanza_id"])
        if room_id is None or target is None:
            return
        reason = op["reason"] or None
        if op.get("address"):
            moderator = await self.virtual(op["address"], op["nick"])
            try:
                await self.hs.as_user(moderator).redact(room_id, target, reason)
                return
            except MatrixRequestError as exc:
                if exc.status != 403:
                    raise
        said = f"moderated in XMPP by {op['nick'] or muc}" + (f": {reason}" if reason else "")
        try:
            await self.hs.redact(room_id, target, said)
        except MatrixRequestError as exc:
            if exc.status != 403:
                raise
            await self.notice(room_id, f"{op['nick'] or muc} removed a message in {muc}, but "
                              f"the gateway may not redact it here ({exc.errcode}).")
