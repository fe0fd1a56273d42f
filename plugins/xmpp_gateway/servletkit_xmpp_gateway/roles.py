"""Room power levels ↔ MUC roles and affiliations; kicks and bans both ways (a mixin
of :class:`Bridge`).

Matrix → XMPP: a Matrix user's puppet stands in the MUC as their power in the room
says (:func:`standing`): at least 100 and the ban level, ``owner``; at least the ban
level, ``admin``; at least the kick level, the ``moderator`` role; else an ordinary
``participant``. It is set by the gateway's own occupant (the MUC's owner when the
gateway made the room) when the puppet joins and when the room's power levels change.
A Matrix kick or ban of an XMPP user's virtual user kicks the occupant (role ``none``)
or bans it (affiliation ``outcast``, by its real JID; an occupant whose real JID is
hidden can only be kicked).

XMPP → Matrix: an XMPP occupant who is ``owner`` or ``admin`` gets the room's
moderation level for its virtual user (the highest of the kick, ban and redact levels),
a ``moderator`` the highest of kick and redact; back to ordinary, its power is taken
away. Owners are not given 100: the gateway's bot stays above every virtual user, so it
can take the power back, and the room's settings stay with Matrix admins. An XMPP
kick (status 307) or ban (301) of a Matrix user's puppet kicks or bans the Matrix user
from the room. All is done by the gateway's appservice bot; when it lacks the power,
the room gets a notice that says so.

No loops: power levels and memberships the gateway's bot sets are never relayed (its
events are its own); the presences of its puppets are never relayed either, and a
kick it makes in the MUC makes the virtual user leave a room it has already left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout

from servletkit.wires.appservice.homeserver import MatrixRequestError, q
from servletkit_xmpp_gateway import names
from servletkit_xmpp_gateway.core import BridgeCore

if TYPE_CHECKING:
    from slixmpp.types import MucAffiliation, MucRole

    from servletkit import Event

MUC_USER_NS = "http://jabber.org/protocol/muc#user"
STATUS_BANNED = 301
STATUS_KICKED = 307
ORDINARY: tuple[str, str] = ("none", "participant")  # no say: affiliation, role
IQ_TIMEOUT = 10.0


def _level(levels: dict[str, Any], key: str, default: int) -> int:
    value = levels.get(key, default)
    return value if isinstance(value, int) else default


def standing(levels: dict[str, Any], user_id: str) -> tuple[MucAffiliation, MucRole]:
    """The MUC affiliation and role of ``user_id``'s puppet, from the room's
    ``m.room.power_levels`` content ``levels``."""
    users = levels.get("users") or {}
    power = users.get(user_id, _level(levels, "users_default", 0))
    power = power if isinstance(power, int) else 0
    ban, kick = _level(levels, "ban", 50), _level(levels, "kick", 50)
    if power >= max(100, ban):
        return "owner", "moderator"
    if power >= ban:
        return "admin", "moderator"
    return "none", "moderator" if power >= kick else "participant"


def seen_standing(pres: Any) -> tuple[str, str]:
    """The affiliation and role a MUC presence gives its occupant, read from the XML: on
    a component stream slixmpp's ``pres["muc"]`` does not see them."""
    item = pres.xml.find(f"{{{MUC_USER_NS}}}x/{{{MUC_USER_NS}}}item")
    if item is None:
        return ORDINARY
    return item.get("affiliation") or "none", item.get("role") or "none"


def power_for(levels: dict[str, Any], affiliation: str, role: str) -> int | None:
    """The Matrix power an XMPP occupant of ``affiliation`` and ``role`` gets in the
    room (``None``: the room's default)."""
    kick, redact = _level(levels, "kick", 50), _level(levels, "redact", 50)
    if affiliation in ("owner", "admin"):
        return max(kick, redact, _level(levels, "ban", 50))
    return max(kick, redact) if role == "moderator" else None


class RolesRelay(BridgeCore):
    """Power, kicks and bans both ways."""

    xmpp_powers: dict[tuple[str, str], tuple[str, str]]  # (muc, address) → the same

    # -- Matrix → XMPP -----------------------------------------------------------------

    async def matrix_sanction(self, event: Event, muc: str | None) -> bool:
        """Queue a Matrix user's kick or ban of a virtual user in bridged room ``muc``;
        whether ``event`` was one."""
        membership = event.content.get("membership")
        if (muc is None or membership not in ("leave", "ban") or event.state_key is None
                or event.sender == event.state_key or self.is_ours(event.sender)):
            return False
        await self.queue_out({
            "op": "ban" if membership == "ban" else "kick", "muc": muc,
            "room_id": event.room_id, "user": event.sender, "target": event.state_key,
            "reason": str(event.content.get("reason") or "")})
        return True

    async def apply_roles_out(self, op: dict[str, Any]) -> None:
        """Carry out a queued power change, kick or ban in the MUC."""
        muc, room_id = op["muc"], op["room_id"]
        if op["op"] == "power":
            for (room, user_id), puppet in list(self.puppets.items()):
                if room == muc:
                    await self.set_standing(muc, room_id, user_id, puppet, op["content"])
            return
        localpart = op["target"][1:].split(":", 1)[0]
        address = names.xmpp_address_of(self.config.user_prefix, localpart)
        nick = next((n for n, a in self.occupants.get(muc, {}).items() if a == address), None)
        reason = f"{op['user']} in Matrix" + (f": {op['reason']}" if op["reason"] else "")
        assert self.xmpp is not None
        muc_plugin = self.xmpp.plugin["xep_0045"]
        try:
            if op["op"] == "ban" and address is not None and "/" not in address:
                await muc_plugin.set_affiliation(JID(muc), "outcast", jid=JID(address),
                                                 reason=reason, ifrom=JID(self.bot_jid),
                                                 timeout=IQ_TIMEOUT)
            elif nick is not None:
                await muc_plugin.set_role(JID(muc), nick, "none", reason=reason,
                                          ifrom=JID(self.bot_jid), timeout=IQ_TIMEOUT)
                if op["op"] == "ban":
                    await self.notice(room_id, f"{nick} has no known address in {muc}: "
                                      "kicked there, not banned.")
        except (IqError, IqTimeout):
            await self.notice(room_id, f"{op['user']}: {nick or address} could not be "
                              f"{'banned' if op['op'] == 'ban' else 'kicked'} in {muc}: "
                              "the gateway is not a moderator there.")

    async def set_standing(self, muc: str, room_id: str, user_id: str, nick: str,
                           levels: dict[str, Any] | None = None) -> None:
        """Give ``user_id``'s puppet (``nick`` in ``muc``) the affiliation and role their
        power in ``room_id`` says (the room's power levels are read if not given)."""
        if levels is None:
            try:
                levels = await self.hs.get_state(room_id, "m.room.power_levels")
            except Exception as exc:  # the homeserver may be down: a join must not fail
                self.log.info("cannot read the power levels of %s: %s", room_id, exc)
                return
        wanted = standing(levels, user_id)
        have = self.standings.get((muc, user_id), ORDINARY)
        if wanted == have:
            return
        assert self.xmpp is not None
        muc_plugin, bot = self.xmpp.plugin["xep_0045"], JID(self.bot_jid)
        try:
            if wanted[0] != have[0]:
                await muc_plugin.set_affiliation(
                    JID(muc), wanted[0], jid=JID(self.puppet_full_jid(user_id).bare),
                    ifrom=bot, timeout=IQ_TIMEOUT)
            if wanted[0] == "none" and wanted[1] != have[1]:
                await muc_plugin.set_role(JID(muc), nick, wanted[1], ifrom=bot,
                                          timeout=IQ_TIMEOUT)
        except (IqError, IqTimeout):
            await self.notice(room_id, f"{user_id} should be {wanted[0]}/{wanted[1]} in "
                              f"{muc}, but the gateway is not its owner there.")
            return
        self.standings[(muc, user_id)] = wanted

    # -- XMPP → Matrix -----------------------------------------------------------------

    def xmpp_standing(self, muc: str, address: str, nick: str, pres: Any) -> None:
        """An XMPP occupant's affiliation or role may have changed: queue its power."""
        now = seen_standing(pres)
        if pres["type"] == "unavailable" or now == self.xmpp_powers.get((muc, address),
                                                                         ORDINARY):
            return
        self.xmpp_powers[(muc, address)] = now
        self.queue_in({"op": "power", "muc": muc, "address": address, "nick": nick,
                       "affiliation": now[0], "role": now[1]})

    def puppet_removed(self, muc: str, nick: str, pres: Any) -> None:
        """A puppet's occupant left ``muc``: if an XMPP moderator kicked or banned it,
        queue the same for its Matrix user."""
        codes = pres["muc"]["status_codes"]
        user_id = next((u for (m, u), n in self.puppets.items() if m == muc and n == nick),
                       None)
        if user_id is None or not codes & {STATUS_KICKED, STATUS_BANNED}:
            return
        del self.puppets[(muc, user_id)]
        self.our_nicks.get(muc, set()).discard(nick)
        self.occupants.get(muc, {}).pop(nick, None)
        self.standings.pop((muc, user_id), None)
        item = pres.xml.find(f"{{{MUC_USER_NS}}}x/{{{MUC_USER_NS}}}item")
        actor = None if item is None else item.find(f"{{{MUC_USER_NS}}}actor")
        self.queue_in({"op": "ban" if STATUS_BANNED in codes else "kick", "muc": muc,
                       "user": user_id, "actor": None if actor is None else actor.get("nick"),
                       "reason": (item.findtext(f"{{{MUC_USER_NS}}}reason")
                                  if item is not None else None) or ""})

    async def apply_roles_in(self, op: dict[str, Any]) -> None:
        """Carry out a queued XMPP power change, kick or ban in Matrix."""
        room_id = self.rooms.get(op["muc"]) or await self.store.get(f"room/{op['muc']}")
        if room_id is None:
            return
        if op["op"] == "power":
            await self._set_power(room_id, op)
            return
        await self.store.delete(f"member/{room_id}/{op['user']}")
        verb = "ban" if op["op"] == "ban" else "kick"
        done = "banned" if verb == "ban" else "kicked"
        by = f" by {op['actor']}" if op.get("actor") else ""
        reason = f"{done} in XMPP{by}" + (f": {op['reason']}" if op["reason"] else "")
        try:
            await self.hs.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/{verb}",
                                  json={"user_id": op["user"], "reason": reason})
        except MatrixRequestError as exc:
            if exc.status != 403:
                raise
            await self.notice(room_id, f"{op['user']} was {reason}, but the gateway may not "
                              f"{verb} them in this room ({exc.errcode}).")

    async def _set_power(self, room_id: str, op: dict[str, Any]) -> None:
        user = await self.virtual(op["address"], op["nick"])
        levels = await self.hs.get_state(room_id, "m.room.power_levels")
        users = dict(levels.get("users") or {})
        wanted = power_for(levels, op["affiliation"], op["role"])
        if users.get(user) == wanted:
            return
        if wanted is None:
            users.pop(user, None)
        else:
            users[user] = wanted
        try:
            await self.hs.send_state(room_id, "m.room.power_levels", "",
                                     {**levels, "users": users})
        except MatrixRequestError as exc:
            if exc.status != 403:
                raise
            await self.notice(room_id, f"{op['nick']} is {op['affiliation']}/{op['role']} in "
                              f"{op['muc']}, but the gateway may not change power levels "
                              f"here ({exc.errcode}).")
