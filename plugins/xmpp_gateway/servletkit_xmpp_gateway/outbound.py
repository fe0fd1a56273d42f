"""Matrix → XMPP: puppets in the MUC and their messages (a mixin of :class:`Bridge`)."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.basexmpp import BaseXMPP
from slixmpp.exceptions import PresenceError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import StanzaPath

from servletkit_xmpp_gateway import (
    edits,
    media,
    mentions,
    msgids,
    names,
    reactions,
    redactions,
    replies,
    roles,
)
from servletkit_xmpp_gateway.core import BridgeCore, Kind
from servletkit_xmpp_gateway.formatting import html_to_xhtml_body
from servletkit_xmpp_gateway.history import add_delay

if TYPE_CHECKING:
    from servletkit.wires.appservice.homeserver import HomeserverClient

JOIN_TIMEOUT = 10.0
NICK_ATTEMPTS = 5
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class OutboundRelay(BridgeCore):
    """What the gateway does on the XMPP side for Matrix users."""

    async def join_bot(self, muc: str) -> None:
        """Make the gateway's own occupant join ``muc`` (it hears the room for Matrix)."""
        assert self.xmpp is not None
        await self.xmpp.plugin["xep_0045"].join_muc_wait(
            JID(muc), self.config.bot_nick, presence_options={"pfrom": JID(self.bot_jid)},
            maxstanzas=0, timeout=JOIN_TIMEOUT)

    async def join_puppet(self, muc: str, room_id: str, user_id: str,
                          wanted: str) -> str:
        """Join ``user_id``'s puppet to ``muc`` with ``wanted`` or a free variant of it.

        Returns the nick it got. When that is not ``wanted``, the Matrix user is
        told in the room, with the nick they now have.
        """
        pfrom = self.puppet_full_jid(user_id)
        muc_plugin = self.stream(pfrom).plugin["xep_0045"]

        async def join(nick: str) -> str:
            pres, _, _, _ = await muc_plugin.join_muc_wait(
                JID(muc), nick, presence_options={"pfrom": pfrom}, maxstanzas=0,
                timeout=JOIN_TIMEOUT)
            self.standings[(muc, user_id)] = roles.seen_standing(pres)
            return str(pres["from"].resource)

        got = await self._take_nick(muc, room_id, user_id, wanted, join)
        await self.set_standing(muc, room_id, user_id, got)  # what their power says
        return got

    async def change_nick(self, muc: str, room_id: str, user_id: str,
                          wanted: str) -> str:
        """Change the nick of ``user_id``'s puppet in ``muc`` to ``wanted`` (or a free variant).

        Waits for the MUC's answer: its self-presence (status 110) under the new
        nick, or a refusal; a ``conflict`` (409) is retried with a suffix, and the
        Matrix user is told the nick they got. Until the MUC agrees the puppet keeps
        its old nick, so nobody appears twice.
        """
        pfrom = self.puppet_full_jid(user_id)
        return await self._take_nick(muc, room_id, user_id, wanted,
                                     lambda nick: self._rename(muc, pfrom, nick))

    def puppet_full_jid(self, user_id: str) -> JID:
        """The full JID ``user_id``'s puppet speaks from: their linked session's while it
        speaks for them, else the component's address for them."""
        linked = self.accounts.speaker(user_id)
        if linked is not None:
            return JID(linked.boundjid)
        bare = names.puppet_jid(user_id, self.server_name, self.config.component_jid)
        return JID(f"{bare}/matrix")

    def stream(self, sender: JID) -> BaseXMPP:
        """The stream that sends as ``sender``: a linked session, else the component."""
        linked = self.accounts.stream(sender)
        if linked is not None:
            return linked
        assert self.xmpp is not None
        return self.xmpp

    async def _take_nick(self, muc: str, room_id: str, user_id: str, wanted: str,
                         attempt: Callable[[str], Awaitable[str]]) -> str:
        """Claim ``wanted`` (or the first free variant the MUC accepts) for ``user_id``'s
        puppet with ``attempt`` (a join or a nick change, returning the nick the MUC
        gave); record it and tell the Matrix user when it is not ``wanted``."""
        occupants = self.occupants.setdefault(muc, {})
        current = self.puppets.get((muc, user_id))
        taken = (set(occupants) | {self.config.bot_nick}) - {current or ""}
        nick = names.free_nick(wanted, taken)
        ours = self.our_nicks.setdefault(muc, set())
        for _ in range(NICK_ATTEMPTS):
            ours.add(nick)
            try:
                got = await attempt(nick)
                break
            except PresenceError as exc:
                ours.discard(nick)
                if not _conflict(exc):
                    raise
                taken.add(nick)
                nick = names.free_nick(wanted, taken)
        else:
            raise RuntimeError(f"no free nick for {user_id} in {muc}")
        ours.add(got)
        for old in (nick, current):
            if old is not None and old != got:
                ours.discard(old)
                occupants.pop(old, None)
        self.puppets[(muc, user_id)] = got
        occupants[got] = names.puppet_jid(user_id, self.server_name, self.config.component_jid)
        if await self.store.get(f"member/{room_id}/{user_id}") != got:
            await self.store.put(f"member/{room_id}/{user_id}", got)
            if got != wanted:
                await self.notice(room_id, f"{user_id}: the nick {wanted!r} is taken in {muc}; "
                                  f"XMPP users see you as {got!r}.")
        return got

    async def _rename(self, muc: str, pfrom: JID, nick: str) -> str:
        """Ask ``muc`` to call occupant ``pfrom`` ``nick``; the nick it gave, or
        :class:`PresenceError` if it refused (XEP-0045 §7.6)."""
        stream = self.stream(pfrom)
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def settle(pres: Any) -> None:
            if (pres["to"] == pfrom and pres["from"].bare == muc
                    and pres["type"] != "unavailable" and not answer.done()):
                if pres["type"] == "error":
                    answer.set_exception(PresenceError(pres))  # type: ignore[no-untyped-call]
                else:
                    answer.set_result(str(pres["from"].resource))

        # a refusal carries no MUC payload and slixmpp raises no event for it
        refusal = f"muc-rename-{pfrom}-{nick}"
        stream.register_handler(Callback(refusal, StanzaPath("presence@type=error"), settle))
        try:
            with stream.event_handler(f"muc::{muc}::self-presence", settle):
                stream.send_presence(pto=JID(f"{muc}/{nick}"), pfrom=pfrom)
                return await asyncio.wait_for(answer, JOIN_TIMEOUT)
        finally:
            stream.remove_handler(refusal)

    async def leave_puppet(self, muc: str, room_id: str, user_id: str) -> None:
        """Take ``user_id``'s puppet out of ``muc`` and forget it (an occupant of a linked
        session that has ended is gone already: its stream is not in the room)."""
        nick = self.puppets.pop((muc, user_id), None)
        self.standings.pop((muc, user_id), None)
        if nick is not None:
            pfrom = self.puppet_full_jid(user_id)
            with contextlib.suppress(KeyError):  # slixmpp: this stream is not in ``muc``
                self.stream(pfrom).plugin["xep_0045"].leave_muc(JID(muc), nick, pfrom=pfrom)
            self.occupants.get(muc, {}).pop(nick, None)
            self.our_nicks.get(muc, set()).discard(nick)
        await self.store.delete(f"member/{room_id}/{user_id}")

    async def apply_out(self, op: dict[str, Any]) -> None:
        """Carry out one queued Matrix → XMPP operation."""
        assert self.xmpp is not None
        kind = op["op"]
        if kind == "dm":
            await self.send_direct(op)
            return
        if kind == "speaker":
            await self.accounts.switch(op["user"])
            return
        if kind in ("power", "kick", "ban"):
            await self.apply_roles_out(op)
            return
        muc, room_id, user_id = op["muc"], op["room_id"], op["user"]
        if kind == "leave":
            await self.leave_puppet(muc, room_id, user_id)
            return
        if (muc, user_id) not in self.puppets:
            wanted = await self._wanted_nick(room_id, user_id, op.get("displayname"))
            await self.join_puppet(muc, room_id, user_id, wanted)
        elif kind == "join":  # already in: a display name change
            wanted = await self._wanted_nick(room_id, user_id, op.get("displayname"))
            current = self.puppets[(muc, user_id)]
            if current != wanted and not current.startswith(f"{wanted[:names.NICK_MAX - 6]} ("):
                await self.change_nick(muc, room_id, user_id, wanted)
        if kind == "join":
            return
        await self._say(muc, user_id, op)

    async def _wanted_nick(self, room_id: str, user_id: str,
                           displayname: str | None) -> str:
        if displayname is None:
            try:
                member = await self.hs.get_state(room_id, "m.room.member", user_id)
                displayname = member.get("displayname")
            except Exception:
                displayname = None
        return names.sanitise_nick(displayname, user_id[1:].split(":", 1)[0])

    async def _say(self, muc: str, user_id: str, op: dict[str, Any]) -> None:
        if not await self._carry(op, JID(muc), self.puppet_full_jid(user_id), "groupchat", muc):
            await self.notice(op["room_id"], f"{user_id}: this message cannot be carried to "
                              f"{muc} ({op['content'].get('msgtype')!r}).")

    async def send_direct(self, op: dict[str, Any]) -> None:
        """Send a Matrix user's DM message to the XMPP address it is for."""
        if not await self._carry(op, JID(op["to"]), self.puppet_full_jid(op["user"]), "chat",
                                 op["to"]):
            await self.notice(op["room_id"], "this message cannot be carried to XMPP.")

    async def _carry(self, op: dict[str, Any], to: JID, sender: JID, mtype: Kind,
                     scope: str) -> bool:
        """Send what Matrix event ``op`` says to ``to`` in ``scope``; ``False`` if it has
        no XMPP form."""
        if op.get("type") == "m.reaction":
            await reactions.out(self, op, to, sender, mtype)
            return True
        if op.get("type") == "m.room.redaction":
            await redactions.out(self, op, to, sender, mtype)
            return True
        content, replace = await edits.content_out(self.store, op["content"])
        link = await media.link_out(self, op["event_id"], content)
        if link is not None:
            content = {"msgtype": "m.text", "body": link[0]}
        content = replies.without_fallback(content)
        mentioned: list[str] = []
        if mtype == "groupchat":
            content, mentioned = mentions.out(content, mentions.nicks_of(self, scope))
        msg = self._message(content, to, sender, mtype, op["event_id"])
        if msg is None:
            return False
        if link is not None:
            msg["oob"]["url"], msg["oob"]["desc"] = link
        if replace is not None:
            msg["replace"]["id"] = replace
        if op.get("ts"):  # history sent when the room was bridged: when it was said
            add_delay(msg, op["ts"], self.config.component_jid)
        await replies.out(self, msg, op, mtype)
        mentions.mark(msg, scope, mentioned)
        # remembered first: the MUC's reflection (its stanza-id) may come back before a
        # store write after the send would be done
        await msgids.remember(self.store, op["event_id"], scope, id=msg["id"],
                              origin_id=msg["id"])
        msg.send()
        await edits.note(self.store, op["event_id"], op["content"])
        return True

    def reader(self, op: dict[str, Any]) -> HomeserverClient:
        """Who can read the room of Matrix event ``op``: the gateway's bot in a bridged
        room, the XMPP user's virtual user in a DM."""
        if op["op"] == "dm":
            localpart = names.virtual_localpart(self.config.user_prefix, op["to"])
            return self.hs.as_user(f"@{localpart}:{self.server_name}")
        return self.hs

    def _message(self, content: dict[str, Any], to: JID, sender: JID, mtype: Kind,
                 event_id: str) -> Any:
        """The XMPP message for Matrix ``content``, or ``None`` if it has no text form."""
        body = content.get("body")
        msgtype = content.get("msgtype", "m.text")
        if not isinstance(body, str) or msgtype not in ("m.text", "m.notice", "m.emote"):
            return None
        if msgtype == "m.emote":
            body = f"/me {body}"
        msg = self.stream(sender).make_message(mto=to, mbody=body, mtype=mtype, mfrom=sender)
        msg["id"] = _stanza_id(event_id)
        # XEP-0359: the same id as origin-id, which MUCs and archives keep
        origin = ET.SubElement(msg.xml, f"{{{msgids.SID_NS}}}origin-id")
        origin.set("id", msg["id"])
        html = content.get("formatted_body")
        if content.get("format") == "org.matrix.custom.html" and isinstance(html, str):
            xhtml = html_to_xhtml_body(html)
            if msgtype == "m.emote":
                xhtml = f"/me {xhtml}"
            msg["html"]["body"] = xhtml
        return msg

    async def notice(self, room_id: str, text: str) -> None:
        """Tell a Matrix room something, as the gateway's bot (``m.notice``)."""
        try:
            await self.hs.send_message(room_id, {"msgtype": "m.notice", "body": text})
        except Exception:
            self.log.exception("could not send a notice to %s", room_id)
        await asyncio.sleep(0)


def _conflict(exc: PresenceError) -> bool:
    """Whether the MUC refused a nick because it is taken (409 ``conflict``).

    Read from the XML: on a component stream the ``<error/>`` is in the
    ``jabber:component:accept`` namespace, which slixmpp's ``pres["error"]`` does
    not see (it reports ``feature-not-implemented`` instead).
    """
    return exc.presence.xml.find(f".//{{{STANZAS_NS}}}conflict") is not None


def _stanza_id(event_id: str) -> str:
    """An XMPP stanza id carrying the Matrix event id (a resend has the same id)."""
    return "mx-" + event_id.lstrip("$")
