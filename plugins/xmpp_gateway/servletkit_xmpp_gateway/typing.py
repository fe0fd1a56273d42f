"""Typing: XEP-0085 chat states ↔ Matrix ``m.typing`` (a mixin of :class:`Bridge`).

Matrix → XMPP: the homeserver pushes each bridged room's whole list of typing
users (``on_ephemeral``, with ``receive_ephemeral`` in the registration). The
gateway keeps the last list per room in memory and sends, from the puppet of
each Matrix user whose state changed, ``composing`` when they start typing and
``paused`` when they stop (``active`` is what an XMPP client sends with a
message; Matrix does not say whether the user stopped to send or to think).
Chat states are not durable: they are sent while the component is online and
carry a XEP-0334 ``no-store`` hint.

XMPP → Matrix: a chat state from an occupant of a bridged MUC, or from the
other side of a DM, becomes its virtual user typing (``composing``, for
:data:`TYPING_TIMEOUT_MS`) or no longer typing (any other state, also the
``active`` that comes with a message). The operation goes through the inbound
queue, in order with the messages, but is not written to the store.

No echo: the puppets' own chat states reflected by the MUC and the virtual
users in the homeserver's typing lists are ignored.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from slixmpp import JID

from servletkit.wires.appservice.homeserver import q
from servletkit_xmpp_gateway import names
from servletkit_xmpp_gateway.core import BridgeCore, Kind
from servletkit_xmpp_gateway.reactions import HINTS_NS

if TYPE_CHECKING:
    from servletkit import Ephemeral

TYPING_TIMEOUT_MS = 30_000  # how long an XMPP ``composing`` keeps a virtual user typing


class TypingRelay(BridgeCore):
    """Typing notices both ways."""

    typing: dict[str, frozenset[str]]  # room ID → Matrix users typing there, last reported
    xmpp_typing: set[tuple[str, str]]  # (room ID, virtual user) the gateway made type

    # -- Matrix → XMPP ---------------------------------------------------------------

    async def matrix_typing(self, data: Ephemeral) -> None:
        """``on_ephemeral``: send the chat states of Matrix users who started or stopped
        typing in a bridged room or a DM."""
        user_ids = data.content.get("user_ids")
        if data.type != "m.typing" or data.room_id is None or not isinstance(user_ids, list):
            return
        room_id = data.room_id
        now = frozenset(u for u in user_ids if isinstance(u, str) and not self.is_ours(u))
        before = self.typing.get(room_id, frozenset())
        if now:
            self.typing[room_id] = now
        else:
            self.typing.pop(room_id, None)
        changed = {u: "composing" for u in now - before} | {u: "paused" for u in before - now}
        if not changed or self.xmpp is None:
            return
        muc = await self.store.get(f"mroom/{room_id}")
        if muc is not None:
            for user, state in sorted(changed.items()):
                if (muc, user) in self.puppets:  # no puppet: nobody to show typing
                    self._chat_state(JID(muc), user, state, "groupchat")
            return
        dm = await self.store.get(f"dm/{room_id}")
        if dm is not None and dm["matrix"] in changed:
            self._chat_state(JID(dm["xmpp"]), dm["matrix"], changed[dm["matrix"]], "chat")

    def _chat_state(self, to: JID, user_id: str, state: str, mtype: Kind) -> None:
        assert self.xmpp is not None
        sender = self.puppet_full_jid(user_id)
        msg = self.stream(sender).make_message(mto=to, mfrom=sender, mtype=mtype)
        msg["chat_state"] = state
        ET.SubElement(msg.xml, f"{{{HINTS_NS}}}no-store")
        msg.send()

    # -- XMPP → Matrix -----------------------------------------------------------------

    def xmpp_chat_state(self, msg: Any) -> None:
        """A chat state (with or without a body) in a bridged MUC or to a puppet."""
        sender: JID = msg["from"]
        typing = msg["chat_state"] == "composing"
        if msg["type"] == "groupchat":
            muc, nick = sender.bare, sender.resource
            if (str(msg["to"]) != self.bot_jid or muc not in self.rooms or not nick
                    or self.ours_in_muc(muc, nick, JID())
                    or msg.get_plugin("delay", check=True) is not None):
                return
            address = self.occupants.get(muc, {}).get(nick, f"{muc}/{nick}")
            self.queue_in({"op": "typing", "muc": muc, "address": address, "name": nick,
                           "typing": typing})
            return
        party = self.dm_sender(msg)
        if party is None:
            return
        address, name, user_id = party
        self.queue_in({"op": "typing", "address": address, "name": name, "user": user_id,
                       "typing": typing})

    async def apply_typing(self, op: dict[str, Any]) -> None:
        """Make the virtual user of ``op["address"]`` type, or stop, in its room."""
        if "muc" in op:
            room_id = self.rooms.get(op["muc"])
        else:
            room_id = await self.store.get(f"dmroom/{op['address']}/{op['user']}")
        if room_id is None:
            return  # no DM room yet: it is made by a message, not by typing
        localpart = names.virtual_localpart(self.config.user_prefix, op["address"])
        user = f"@{localpart}:{self.server_name}"
        if not op["typing"] and (room_id, user) not in self.xmpp_typing:
            return  # the ``active`` of a message from someone who was not typing
        if op["typing"]:
            user = await self.virtual(op["address"], op["name"])
            await self.join_matrix(room_id, user)
            self.xmpp_typing.add((room_id, user))
            body: dict[str, Any] = {"typing": True, "timeout": TYPING_TIMEOUT_MS}
        else:
            self.xmpp_typing.discard((room_id, user))
            body = {"typing": False}
        await self.hs.as_user(user).request(
            "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/typing/{q(user)}", json=body)
