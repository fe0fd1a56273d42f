"""Matrix → XMPP: puppets in the MUC and their messages (a mixin of :class:`Bridge`)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any, Literal

from slixmpp import JID
from slixmpp.exceptions import PresenceError

from servletkit_xmpp_gateway import edits, msgids, names, reactions, redactions, replies
from servletkit_xmpp_gateway.formatting import html_to_xhtml_body

if TYPE_CHECKING:
    from servletkit.wires.appservice.homeserver import HomeserverClient
    from servletkit_xmpp_gateway.bridge import Bridge

JOIN_TIMEOUT = 10.0
Kind = Literal["chat", "groupchat"]  # the XMPP message types the gateway sends
NICK_ATTEMPTS = 5


class OutboundRelay:
    """What the gateway does on the XMPP side for Matrix users."""

    async def join_bot(self: Bridge, muc: str) -> None:
        """Make the gateway's own occupant join ``muc`` (it hears the room for Matrix)."""
        assert self.xmpp is not None
        await self.xmpp.plugin["xep_0045"].join_muc_wait(
            JID(muc), self.config.bot_nick, presence_options={"pfrom": JID(self.bot_jid)},
            maxstanzas=0, timeout=JOIN_TIMEOUT)

    async def join_puppet(self: Bridge, muc: str, room_id: str, user_id: str,
                          wanted: str) -> str:
        """Join ``user_id``'s puppet to ``muc`` with ``wanted`` or a free variant of it.

        Returns the nick it got. When that is not ``wanted``, the Matrix user is
        told in the room, with the nick they now have.
        """
        assert self.xmpp is not None
        jid = names.puppet_jid(user_id, self.server_name, self.config.component_jid)
        taken = set(self.occupants.get(muc, {})) | {self.config.bot_nick}
        current = self.puppets.get((muc, user_id))
        taken.discard(current or "")
        nick = names.free_nick(wanted, taken)
        ours = self.our_nicks.setdefault(muc, set())
        for _ in range(NICK_ATTEMPTS):
            ours.add(nick)
            try:
                await self.xmpp.plugin["xep_0045"].join_muc_wait(
                    JID(muc), nick, presence_options={"pfrom": JID(f"{jid}/matrix")},
                    maxstanzas=0, timeout=JOIN_TIMEOUT)
                break
            except PresenceError as exc:
                ours.discard(nick)
                if exc.condition != "conflict":
                    raise
                taken.add(nick)
                nick = names.free_nick(wanted, taken)
        else:
            raise RuntimeError(f"no free nick for {user_id} in {muc}")
        self.puppets[(muc, user_id)] = nick
        self.occupants.setdefault(muc, {})[nick] = jid
        if await self.store.get(f"member/{room_id}/{user_id}") != nick:
            await self.store.put(f"member/{room_id}/{user_id}", nick)
            if nick != wanted:
                await self.notice(room_id, f"{user_id}: the nick {wanted!r} is taken in {muc}; "
                                  f"XMPP users see you as {nick!r}.")
        return nick

    async def change_nick(self: Bridge, muc: str, room_id: str, user_id: str,
                          wanted: str) -> None:
        """Change the nick of ``user_id``'s puppet in ``muc`` to ``wanted`` (or a free variant)."""
        assert self.xmpp is not None
        current = self.puppets[(muc, user_id)]
        occupants = self.occupants.setdefault(muc, {})
        nick = names.free_nick(wanted, (set(occupants) | {self.config.bot_nick}) - {current})
        jid = names.puppet_jid(user_id, self.server_name, self.config.component_jid)
        ours = self.our_nicks.setdefault(muc, set())
        ours.add(nick)
        self.xmpp.send_presence(pto=JID(f"{muc}/{nick}"), pfrom=JID(f"{jid}/matrix"))
        ours.discard(current)
        occupants.pop(current, None)
        occupants[nick] = jid
        self.puppets[(muc, user_id)] = nick
        await self.store.put(f"member/{room_id}/{user_id}", nick)
        if nick != wanted:
            await self.notice(room_id, f"{user_id}: the nick {wanted!r} is taken in {muc}; "
                              f"XMPP users see you as {nick!r}.")

    async def leave_puppet(self: Bridge, muc: str, room_id: str, user_id: str) -> None:
        """Take ``user_id``'s puppet out of ``muc`` and forget it."""
        assert self.xmpp is not None
        nick = self.puppets.pop((muc, user_id), None)
        if nick is not None:
            jid = names.puppet_jid(user_id, self.server_name, self.config.component_jid)
            self.xmpp.plugin["xep_0045"].leave_muc(JID(muc), nick, pfrom=JID(f"{jid}/matrix"))
            self.occupants.get(muc, {}).pop(nick, None)
            self.our_nicks.get(muc, set()).discard(nick)
        await self.store.delete(f"member/{room_id}/{user_id}")

    async def apply_out(self: Bridge, op: dict[str, Any]) -> None:
        """Carry out one queued Matrix → XMPP operation."""
        assert self.xmpp is not None
        kind = op["op"]
        if kind == "dm":
            await self.send_direct(op)
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

    async def _wanted_nick(self: Bridge, room_id: str, user_id: str,
                           displayname: str | None) -> str:
        if displayname is None:
            try:
                member = await self.hs.get_state(room_id, "m.room.member", user_id)
                displayname = member.get("displayname")
            except Exception:
                displayname = None
        return names.sanitise_nick(displayname, user_id[1:].split(":", 1)[0])

    async def _say(self: Bridge, muc: str, user_id: str, op: dict[str, Any]) -> None:
        jid = names.puppet_jid(user_id, self.server_name, self.config.component_jid)
        if not await self._carry(op, JID(muc), JID(f"{jid}/matrix"), "groupchat", muc):
            await self.notice(op["room_id"], f"{user_id}: this message cannot be carried to "
                              f"{muc} ({op['content'].get('msgtype')!r}).")

    async def send_direct(self: Bridge, op: dict[str, Any]) -> None:
        """Send a Matrix user's DM message to the XMPP address it is for."""
        jid = names.puppet_jid(op["user"], self.server_name, self.config.component_jid)
        if not await self._carry(op, JID(op["to"]), JID(f"{jid}/matrix"), "chat", op["to"]):
            await self.notice(op["room_id"], "this message cannot be carried to XMPP.")

    async def _carry(self: Bridge, op: dict[str, Any], to: JID, sender: JID, mtype: Kind,
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
        msg = self._message(replies.without_fallback(content), to, sender, mtype,
                            op["event_id"])
        if msg is None:
            return False
        if replace is not None:
            msg["replace"]["id"] = replace
        await replies.out(self, msg, op, mtype)
        msg.send()
        await msgids.remember(self.store, op["event_id"], scope, id=msg["id"],
                              origin_id=msg["id"])
        await edits.note(self.store, op["event_id"], op["content"])
        return True

    def reader(self: Bridge, op: dict[str, Any]) -> HomeserverClient:
        """Who can read the room of Matrix event ``op``: the gateway's bot in a bridged
        room, the XMPP user's virtual user in a DM."""
        if op["op"] == "dm":
            localpart = names.virtual_localpart(self.config.user_prefix, op["to"])
            return self.hs.as_user(f"@{localpart}:{self.server_name}")
        return self.hs

    def _message(self: Bridge, content: dict[str, Any], to: JID, sender: JID, mtype: Kind,
                 event_id: str) -> Any:
        """The XMPP message for Matrix ``content``, or ``None`` if it has no text form."""
        assert self.xmpp is not None
        body = content.get("body")
        msgtype = content.get("msgtype", "m.text")
        if not isinstance(body, str) or msgtype not in ("m.text", "m.notice", "m.emote"):
            return None
        if msgtype == "m.emote":
            body = f"/me {body}"
        msg = self.xmpp.make_message(mto=to, mbody=body, mtype=mtype, mfrom=sender)
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

    async def notice(self: Bridge, room_id: str, text: str) -> None:
        """Tell a Matrix room something, as the gateway's bot (``m.notice``)."""
        try:
            await self.hs.send_message(room_id, {"msgtype": "m.notice", "body": text})
        except Exception:
            self.log.exception("could not send a notice to %s", room_id)
        await asyncio.sleep(0)


def _stanza_id(event_id: str) -> str:
    """An XMPP stanza id carrying the Matrix event id (a resend has the same id)."""
    return "mx-" + event_id.lstrip("$")
