"""The policy server as a room member: joining over federation, invites, leaving.

A homeserver consults a policy server only if the server named by the room's
``m.room.policy`` has a user joined to the room, so the policy wire has one,
``@policy:<server_name>``, joined with make_join / send_join (spec:
server-server API, "Joining Rooms"), by ``servletkit policy join`` or after
a room admin invites it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from signedjson.sign import sign_json

from servletkit.hooks.context import PolicyServerInfo
from servletkit.wires.policy.federation import FederationClient, FederationError, path
from servletkit.wires.policy.keys import PolicyKeys
from servletkit.wires.policy.pdu import (
    ROOM_VERSIONS,
    PduError,
    RoomVersion,
    add_content_hash,
    event_id,
    redact,
)
from servletkit.wires.policy.rooms import Room, Rooms

log = logging.getLogger("servletkit.policy_wire")

POLICY_LOCALPART: Final = "policy"
JOIN_RETRY_DELAYS_S: Final = (0.5, 1.0, 2.0, 4.0)


def policy_user(server_name: str) -> str:
    """The user the policy server joins rooms as."""
    return f"@{POLICY_LOCALPART}:{server_name}"


def server_info(server_name: str, keys: PolicyKeys) -> PolicyServerInfo:
    """The policy server ``server_name`` with ``keys``, as plugins see it
    (``context.policy``) and as a room's ``m.room.policy`` names it."""
    return PolicyServerInfo(server_name, keys.policy_public_key, policy_user(server_name))


def sign_event(pdu: dict[str, Any], server_name: str, keys: PolicyKeys,
               version: RoomVersion) -> dict[str, Any]:
    """Add our federation signature (over the redacted event) to ``pdu``'s signatures."""
    redacted = redact(pdu, version)
    redacted.pop("signatures", None)
    signature = sign_json(redacted, server_name, keys.federation)["signatures"][server_name]
    signatures = dict(pdu.get("signatures") or {})
    signatures[server_name] = {**signatures.get(server_name, {}), **signature}
    pdu["signatures"] = signatures
    return pdu


class PolicyPeer:
    """Joins, invites and membership bookkeeping for the policy user."""

    def __init__(self, federation: FederationClient, keys: PolicyKeys, rooms: Rooms) -> None:
        self.federation = federation
        self.keys = keys
        self.rooms = rooms
        self.server_name = federation.server_name
        self.user_id = policy_user(self.server_name)

    async def join(self, room_id: str, via: str, base_url: str | None = None
                   ) -> tuple[Room, Mapping[str, Any] | None]:
        """Join ``room_id`` through server ``via`` (at ``base_url`` if given, else found by
        its name); record the room. Returns it and the room's ``m.room.policy`` content
        (``None`` if it has none). Raises :class:`FederationError`."""
        versions = "&".join(f"ver={v}" for v in ROOM_VERSIONS)
        template = await self.federation.request(
            "GET", via, path("/_matrix/federation/v1/make_join/{}/{}", room_id, self.user_id)
            + f"?{versions}", base_url=base_url)
        if not isinstance(template, Mapping) or not isinstance(template.get("event"), dict):
            raise FederationError(f"make_join via {via}: no event template in the answer")
        version = ROOM_VERSIONS.get(str(template.get("room_version")))
        if version is None:
            raise FederationError(f"make_join via {via}: room version "
                                  f"{template.get('room_version')!r} is not supported")
        event = dict(template["event"])
        event["origin_server_ts"] = int(time.time() * 1000)
        event.pop("signatures", None)
        event.pop("hashes", None)
        sign_event(add_content_hash(event), self.server_name, self.keys, version)
        join_id = event_id(event, version)
        answer = await self.federation.request(
            "PUT", via, path("/_matrix/federation/v2/send_join/{}/{}", room_id, join_id), event,
            base_url=base_url)
        log.info("policy wire: %s joined %s via %s", self.user_id, room_id, via)
        room = await self.rooms.add(room_id, version.identifier, "joined", via)
        state = answer.get("state") if isinstance(answer, Mapping) else None
        self.federation.note_room_server(via)
        for member in state or ():
            self.note_member_servers(member)
        policy = next((e.get("content") for e in state or () if isinstance(e, Mapping)
                       and e.get("type") == "m.room.policy" and e.get("state_key") == ""), None)
        return room, policy if isinstance(policy, Mapping) else None

    async def accept_invite(self, origin: str, event: dict[str, Any], version: RoomVersion
                            ) -> Any:
        """Our signature on an invite of the policy user; :class:`PduError` for another."""
        if event.get("type") != "m.room.member" or event.get("state_key") != self.user_id or (
                event["content"].get("membership") != "invite"):
            raise PduError(f"this server accepts only invites of {self.user_id}")
        await self.rooms.add(event["room_id"], version.identifier, "invited", origin)
        self.federation.note_room_server(origin)
        log.info("policy wire: %s invited %s into %s", event.get("sender"), self.user_id,
                 event["room_id"])
        return sign_event(dict(event), self.server_name, self.keys, version)

    async def join_after_invite(self, room_id: str, via: str) -> None:
        """Join a room we were invited to (logged, never raised: it runs in the background).

        The inviting server may not have stored the invite yet when it gets our answer
        (its make_join then says we are not invited), so the join is tried again after
        0.5, 1, 2 and 4 s.
        """
        for delay in (*JOIN_RETRY_DELAYS_S, None):
            try:
                await self.join(room_id, via)
                return
            except FederationError as exc:
                if delay is None:
                    log.error("policy wire: could not join %s after its invite: %s", room_id,
                              exc)
                    return
                log.info("policy wire: joining %s after its invite failed (%s); again in "
                         "%g s", room_id, exc, delay)
                await asyncio.sleep(delay)

    async def note_pdu(self, pdu: Any, from_room_server: bool = False
                       ) -> tuple[str | None, Room | None]:
        """A received PDU's ID and room; forgets a room the policy user left or was
        removed from. ``from_room_server``: the server that sent it is one the rooms'
        events showed already; only then are the servers it names noted
        (:meth:`note_member_servers`): any server can send a PDU naming invented ones."""
        if not isinstance(pdu, dict) or not isinstance(pdu.get("room_id"), str):
            raise PduError("a PDU must be an object with a room_id")
        room = await self.rooms.get(pdu["room_id"])
        if room is None or (version := ROOM_VERSIONS.get(room.room_version)) is None:
            claimed = pdu.get("event_id")
            return (claimed if isinstance(claimed, str) else None), None
        content = pdu.get("content")
        if (pdu.get("type") == "m.room.member" and pdu.get("state_key") == self.user_id
                and isinstance(content, Mapping)
                and content.get("membership") in ("leave", "ban")):
            log.warning("policy wire: %s is no longer in %s (%s)", self.user_id, room.room_id,
                        content.get("membership"))
            await self.rooms.remove(room.room_id)
        if from_room_server:
            self.note_member_servers(pdu)
        return event_id(pdu, version), room

    def note_member_servers(self, pdu: Any) -> None:
        """Tell the federation client which servers an event of a served room shows in
        it: its sender's and, for a join, invite or knock, its member's (their key fetches
        go before strangers': :func:`servletkit.wires.policy.federation.stranger_slots`)."""
        if not isinstance(pdu, Mapping):
            return
        sender, content = pdu.get("sender"), pdu.get("content")
        if isinstance(sender, str) and ":" in sender:
            self.federation.note_room_server(sender.partition(":")[2])
        member = pdu.get("state_key")
        if (pdu.get("type") == "m.room.member" and isinstance(member, str) and ":" in member
                and isinstance(content, Mapping)
                and content.get("membership") in ("join", "invite", "knock")):
            self.federation.note_room_server(member.partition(":")[2])
