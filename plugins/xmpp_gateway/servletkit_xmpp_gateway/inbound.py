"""XMPP → Matrix: occupants as virtual users, their messages, DMs (a mixin of :class:`Bridge`).

The component's callbacks (plain functions, called by slixmpp) only decide
whether a stanza matters and queue an operation (:meth:`Bridge.queue_in`);
:meth:`InboundRelay.apply_in` carries it out against the homeserver later.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from slixmpp import JID

from servletkit.wires.appservice.homeserver import MatrixRequestError
from servletkit_xmpp_gateway import (
    edits,
    media,
    mentions,
    msgids,
    names,
    reactions,
    redactions,
    replies,
)
from servletkit_xmpp_gateway.core import BridgeCore
from servletkit_xmpp_gateway.formatting import matrix_content, xhtml_to_html

if TYPE_CHECKING:
    from servletkit import Event

STATUS_SELF = 110
STATUS_NICK_CHANGED = 303


class InboundRelay(BridgeCore):
    """What the gateway does on the Matrix side for XMPP users."""

    # -- callbacks from slixmpp (sync; they only queue) ---------------------------

    def ours_in_muc(self, muc: str, nick: str, real: JID) -> bool:
        return (nick == self.config.bot_nick or nick in self.our_nicks.get(muc, set())
                or real.domain == self.config.component_jid)

    def xmpp_presence(self, pres: Any) -> None:
        """An occupant came, went or changed nick in a bridged MUC."""
        sender: JID = pres["from"]
        muc, nick = sender.bare, sender.resource
        if (str(pres["to"]) != self.bot_jid or muc not in self.rooms or not nick
                or pres["type"] == "error"):
            return
        codes = pres["muc"]["status_codes"]
        real: JID = pres["muc"]["jid"]
        room = self.occupants.setdefault(muc, {})
        if STATUS_SELF in codes or self.ours_in_muc(muc, nick, real):
            if pres["type"] == "unavailable":
                self.puppet_removed(muc, nick, pres)
            return
        address = room.get(nick) or (real.bare if real.bare else f"{muc}/{nick}")
        if pres["type"] == "unavailable":
            room.pop(nick, None)
            if STATUS_NICK_CHANGED in codes:
                new = pres["muc"]["item_nick"]
                new_address = address if real.bare else f"{muc}/{new}"
                room[new] = new_address
                self.queue_in({"op": "rename", "muc": muc, "address": address,
                               "new_address": new_address, "nick": new})
            else:
                self.queue_in({"op": "leave", "muc": muc, "address": address})
        else:
            if nick not in room:
                room[nick] = address
                self.queue_in({"op": "join", "muc": muc, "address": address, "nick": nick})
            self.xmpp_standing(muc, address, nick, pres)

    def xmpp_groupchat(self, msg: Any) -> None:
        """A message in a bridged MUC (one copy per occupant we have: take the bot's)."""
        sender: JID = msg["from"]
        muc, nick = sender.bare, sender.resource
        fields = fields_of(msg)
        if str(msg["to"]) != self.bot_jid or muc not in self.rooms or not nick or fields is None:
            return
        origin_id, stanza_id = msgids.sid_ids(msg, muc)
        if self.ours_in_muc(muc, nick, JID()):
            if stanza_id and msg["id"]:  # a puppet's message: learn the MUC's id of it
                self.queue_in({"op": "stamp", "muc": muc, "id": msg["id"],
                               "stanza_id": stanza_id})
            return
        if msg.get_plugin("delay", check=True) is not None:
            return  # the MUC's history (the archive's is carried by history.py)
        address = self.occupants.get(muc, {}).get(nick, f"{muc}/{nick}")
        self.queue_in({"op": "msg", "muc": muc, "nick": nick, "address": address, **fields,
                       "id": msg["id"] or "", "origin_id": origin_id, "stanza_id": stanza_id})

    def xmpp_bodiless(self, msg: Any) -> None:
        """Reactions, or a retraction without a fallback body (slixmpp's ``message`` and
        ``groupchat_message`` events are only for messages with a body)."""
        if msg["body"]:
            return  # it came as a message with a body already
        if msg["type"] == "groupchat":
            self.xmpp_groupchat(msg)
        else:
            self.xmpp_direct(msg)

    def xmpp_direct(self, msg: Any) -> None:
        """A 1:1 message from an XMPP user to a Matrix user's address, or a private
        message (XEP-0045 §7.5) from an occupant of a bridged MUC to a Matrix
        user's puppet there: the occupant's address is then ``muc/nick``."""
        self._queue_dm(msg, self.dm_sender(msg))

    def linked_direct(self, user_id: str, msg: Any, bodiless: bool = False) -> None:
        """A 1:1 message to the linked XMPP account of Matrix ``user_id`` (its session got
        it; ``bodiless``: from the reactions or retraction event): it goes to their DM
        with the sender, as one to their puppet would."""
        sender: JID = msg["from"]
        if (bodiless and msg["body"]) or "@" not in sender.bare or sender.bare == msg["to"].bare:
            return
        self._queue_dm(msg, self._party(sender, user_id))

    def _queue_dm(self, msg: Any, party: tuple[str, str, str] | None) -> None:
        """Queue 1:1 message ``msg`` from ``party`` (address, name, Matrix user) for Matrix."""
        fields = fields_of(msg)
        if msg["type"] not in ("chat", "normal") or fields is None or party is None:
            return
        address, name, user_id = party
        origin_id, stanza_id = msgids.sid_ids(msg, None)
        self.queue_in({"op": "dm", "address": address, "name": name, "user": user_id,
                       **fields, "id": msg["id"] or "", "origin_id": origin_id,
                       "stanza_id": stanza_id})

    def dm_sender(self, msg: Any) -> tuple[str, str, str] | None:
        """Who writes to which Matrix user's puppet in 1:1 message ``msg``: the XMPP
        address (an occupant's ``muc/nick`` in a MUC private chat), its name and the
        Matrix user ID; ``None`` if it is not for a puppet or comes from the gateway."""
        sender: JID = msg["from"]
        user_id = names.user_of_puppet(str(msg["to"].bare), self.server_name,
                                       self.config.component_jid)
        if user_id is None or sender.domain == self.config.component_jid:
            return None
        return self._party(sender, user_id)

    def _party(self, sender: JID, user_id: str) -> tuple[str, str, str] | None:
        """The XMPP address and name of ``sender`` writing 1:1 to ``user_id`` (an occupant's
        ``muc/nick`` in a MUC private chat), and ``user_id``; ``None`` for the gateway."""
        if sender.bare in self.rooms:
            if not sender.resource or self.ours_in_muc(sender.bare, sender.resource, JID()):
                return None
            return str(sender), sender.resource, user_id
        return sender.bare, sender.bare, user_id

    # -- applying to Matrix ----------------------------------------------------------

    async def apply_in(self, op: dict[str, Any]) -> None:
        """Carry out one queued XMPP → Matrix operation."""
        kind = op["op"]
        if kind == "dm":
            await self._dm_in(op)
            return
        if kind == "typing":
            await self.apply_typing(op)
            return
        if kind == "moderate":
            await self.apply_moderation(op)
            return
        if kind in ("power", "kick", "ban"):
            await self.apply_roles_in(op)
            return
        room_id = self.rooms.get(op["muc"]) or await self.store.get(f"room/{op['muc']}")
        if room_id is None:
            return
        if kind == "join":
            await self.join_matrix(room_id, await self.virtual(op["address"], op["nick"]))
        elif kind == "leave":
            await self.leave_matrix(room_id, op["address"])
        elif kind == "rename":
            if op["new_address"] != op["address"]:
                await self.leave_matrix(room_id, op["address"])
            user = await self.virtual(op["new_address"], op["nick"])
            await self.join_matrix(room_id, user)
        elif kind == "msg":
            user = await self.virtual(op["address"], op["nick"])
            await self.join_matrix(room_id, user)
            await self._carry_in(room_id, user, op["muc"], op)

    async def _dm_in(self, op: dict[str, Any]) -> None:
        address, target = op["address"], op["user"]
        user = await self.virtual(address, op.get("name", address))
        room_id = await self.store.get(f"dmroom/{address}/{target}")
        if room_id is None:
            room_id = await self.hs.as_user(user).create_room(
                preset="trusted_private_chat", is_direct=True, invite=[target],
                name=address)
            await self.map_dm(room_id, address, target)
            self._joined_matrix.add((room_id, user))
        await self._carry_in(room_id, user, address, op)

    async def _carry_in(self, room_id: str, user: str, scope: str,
                        op: dict[str, Any]) -> None:
        """Do in ``room_id``, as virtual ``user``, what XMPP message ``op`` in ``scope``
        does: react, retract, or say something (perhaps an edit or a reply)."""
        txn = _txn_id(scope, op)
        if "react" in op:
            await reactions.apply_in(self, room_id, user, scope, op, txn)
            return
        if "retract" in op:
            await redactions.apply_in(self, room_id, user, scope, op, txn)
            return
        content: dict[str, Any] = dict(_content(op))
        if scope in self.rooms:  # a group chat: nicks of Matrix users there mention them
            content = mentions.content_in(content, {
                nick: user_id for (muc, user_id), nick in self.puppets.items() if muc == scope})
        if op.get("file") and not op.get("replace"):
            content = await media.content_in(self, user, op["file"]) or content
        if op.get("replace"):
            content = await edits.content_in(self.store, scope, op["replace"], content)
        else:
            content = await replies.content_in(self.store, scope, op.get("reply"), content)
        event_id = await self.hs.as_user(user).send_message(room_id, content, txn_id=txn,
                                                            ts=op.get("ts"))
        await _remember(self, event_id, scope, op)
        await edits.note(self.store, event_id, content)

    async def map_dm(self, room_id: str, address: str, user_id: str) -> None:
        """Remember that ``room_id`` is the DM of XMPP ``address`` and Matrix ``user_id``."""
        await self.store.put(f"dm/{room_id}", {"xmpp": address, "matrix": user_id})
        await self.store.put(f"dmroom/{address}/{user_id}", room_id)

    def refuse_in(self, op: dict[str, Any], exc: Exception) -> None:
        """Tell an XMPP sender that their message did not reach Matrix."""
        if self.xmpp is None or op["op"] not in ("msg", "dm"):
            return
        if op["op"] == "msg":
            to, sender = f"{op['muc']}/{op['nick']}", self.bot_jid
        else:
            to = op["address"]
            sender = names.puppet_jid(op["user"], self.server_name, self.config.component_jid)
        reason = getattr(exc, "error", None) or type(exc).__name__
        self.xmpp.send_message(mto=JID(to), mfrom=JID(sender), mtype="chat",
                               mbody=f"Your message did not reach Matrix: {reason}")

    # -- virtual users -----------------------------------------------------------------

    async def virtual(self, address: str, displayname: str) -> str:
        """The virtual user standing for XMPP ``address``, registered, named ``displayname``."""
        localpart = names.virtual_localpart(self.config.user_prefix, address)
        user_id = f"@{localpart}:{self.server_name}"
        if user_id not in self._profiles:
            await self.hs.register(localpart)
        if self._profiles.get(user_id) != displayname:
            await self.hs.as_user(user_id).set_displayname(displayname)
            self._profiles[user_id] = displayname
        return user_id

    async def join_matrix(self, room_id: str, user_id: str) -> None:
        """Join virtual ``user_id`` to ``room_id`` (the bot invites it if it must)."""
        if (room_id, user_id) in self._joined_matrix:
            return
        try:
            await self.hs.as_user(user_id).join(room_id)
        except MatrixRequestError as exc:
            if exc.status != 403:
                raise
            await self.hs.invite(room_id, user_id)
            await self.hs.as_user(user_id).join(room_id)
        self._joined_matrix.add((room_id, user_id))

    async def leave_matrix(self, room_id: str, address: str) -> None:
        """Take the virtual user of ``address`` out of ``room_id``."""
        localpart = names.virtual_localpart(self.config.user_prefix, address)
        user_id = f"@{localpart}:{self.server_name}"
        self._joined_matrix.discard((room_id, user_id))
        try:
            await self.hs.as_user(user_id).leave(room_id)
        except MatrixRequestError as exc:
            self.log.info("%s could not leave %s: %s", user_id, room_id, exc)

    async def query_user(self, user_id: str) -> bool | None:
        """``on_query_user``: a virtual user exists if its localpart names an XMPP address."""
        localpart, _, server = user_id[1:].partition(":")
        address = names.xmpp_address_of(self.config.user_prefix, localpart)
        if server != self.server_name or address is None or "@" not in address:
            return None
        await self.virtual(address, address)
        return True

    async def virtual_membership(self, event: Event) -> None:
        """A Matrix user invited an XMPP user's virtual user: that room becomes their DM."""
        if (event.content.get("membership") != "invite" or self.is_ours(event.sender)
                or event.state_key is None or event.state_key == self.hs.user_id):
            return
        localpart = event.state_key[1:].split(":", 1)[0]
        address = names.xmpp_address_of(self.config.user_prefix, localpart)
        if address is None or "@" not in address or "/" in address:
            return
        await self.hs.as_user(event.state_key).join(event.room_id)
        self._joined_matrix.add((event.room_id, event.state_key))
        await self.map_dm(event.room_id, address, event.sender)


def _html_of(msg: Any) -> str | None:
    """The XHTML-IM body of ``msg`` as Matrix HTML, if it has one."""
    if msg.xml.find("{http://jabber.org/protocol/xhtml-im}html") is None:
        return None
    return xhtml_to_html(msg["html"]["body"]) or None


def fields_of(msg: Any) -> dict[str, Any] | None:
    """What an XMPP message carries to Matrix: a set of reactions, a retraction, or a
    body (with the message it corrects or replies to); ``None`` if nothing."""
    found = reactions.read(msg)
    if found is not None:
        return found
    retracted = redactions.read(msg)
    if retracted is not None:
        return {"retract": retracted}
    reply, body = replies.read(msg)
    if not body:
        return None
    # a marked quote was cut from the body; the XHTML-IM body would repeat it
    html = _html_of(msg) if body == msg["body"] else None
    return {"body": body, "html": html, "replace": edits.read(msg), "reply": reply,
            "file": media.read(msg, body)}


def _content(op: dict[str, Any]) -> dict[str, str]:
    body: str = op["body"]
    if body.startswith("/me "):
        content = matrix_content(body[4:], op.get("html"))
        content["msgtype"] = "m.emote"
        return content
    return matrix_content(body, op.get("html"))


async def _remember(bridge: BridgeCore, event_id: str, scope: str, op: dict[str, Any]) -> None:
    """Map the Matrix event of an XMPP message to that message's ids."""
    await msgids.remember(bridge.store, event_id, scope, id=op.get("id") or None,
                          origin_id=op.get("origin_id"), stanza_id=op.get("stanza_id"))


def _txn_id(scope: str, op: dict[str, Any]) -> str:
    """A transaction id that is the same each time this XMPP message is relayed."""
    identity = f"{scope}|{op.get('address')}|{op.get('id') or op['key']}"
    return "xmpp-" + hashlib.sha256(identity.encode()).hexdigest()[:32]
