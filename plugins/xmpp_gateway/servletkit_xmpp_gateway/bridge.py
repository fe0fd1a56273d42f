"""The gateway's state and its two relays, one per direction.

Matrix → XMPP: :meth:`Bridge.matrix_event` (from ``on_stored_event``) turns an
event into an *operation* written to ``out/<seq>`` in the plugin's store, inside
the homeserver transaction, so it is durable exactly when the transaction is.
A worker applies the committed operations in order while the component is
online and deletes each once applied: a message sent while Prosody restarts
waits in the store and goes out once, after the reconnect.

XMPP → Matrix: the component's callbacks hand each operation to a worker that
writes it to ``in/<seq>`` at once, and to a second worker that applies it to
Matrix meanwhile (retrying while the homeserver is unreachable) and deletes it
once both are done: the write is not on the message's path, and whatever was
written but not applied when the gateway stopped is applied at the next start.
The Matrix transaction id is derived from the XMPP stanza, so a retry (or that
replay) never doubles a message.

Store keys: ``room/<muc>`` → room ID and ``mroom/<room_id>`` → MUC (the room
mapping), ``member/<room_id>/<user_id>`` → nick (Matrix users puppeted into a
MUC), ``dm/<room_id>`` → ``{"xmpp": address, "matrix": user_id}`` and
``dmroom/<address>/<user_id>`` → room ID (direct chats), ``msg/`` (the
message-id map, :mod:`servletkit_xmpp_gateway.msgids`), ``edit/`` (edits → their
original, :mod:`~servletkit_xmpp_gateway.edits`), ``react/`` and ``reaction/``
(reaction sets, :mod:`~servletkit_xmpp_gateway.reactions`), ``media/`` (files
served to XMPP, :mod:`~servletkit_xmpp_gateway.media`), ``kept/`` (when those
were first seen: they are pruned after ``keep_days``,
:mod:`~servletkit_xmpp_gateway.retention`), ``out/``, ``in/`` (the queues) and
``seq/out``; linked accounts: ``link/``, ``linktoken/``, ``botdm/`` and ``botroom/``
(:mod:`~servletkit_xmpp_gateway.accounts`, :mod:`~servletkit_xmpp_gateway.linking`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from servletkit_xmpp_gateway import history, linking, msgids, names, retention
from servletkit_xmpp_gateway.accounts import Accounts
from servletkit_xmpp_gateway.component import MODERATION_EVENT, ComponentLink
from servletkit_xmpp_gateway.config import GatewayConfig
from servletkit_xmpp_gateway.inbound import InboundRelay
from servletkit_xmpp_gateway.moderation import ModerationRelay
from servletkit_xmpp_gateway.outbound import OutboundRelay
from servletkit_xmpp_gateway.roles import RolesRelay
from servletkit_xmpp_gateway.typing import TypingRelay

if TYPE_CHECKING:
    from slixmpp.componentxmpp import ComponentXMPP

    from servletkit import Event, PluginContext

CARRIED = ("m.room.message", "m.reaction", "m.room.redaction")  # events relayed to XMPP
UNSTORED = ("typing",)  # inbound operations not worth keeping over a restart
COMMIT_WAIT = 10.0  # how long a worker waits for a queued operation's transaction to commit


class Bridge(OutboundRelay, InboundRelay, TypingRelay, ModerationRelay, RolesRelay):
    """One running gateway: the component link, the mapping, the two workers."""

    def __init__(self, config: GatewayConfig, context: PluginContext) -> None:
        if context.homeserver is None or context.store is None:
            raise RuntimeError("xmpp_gateway needs the appservice wire: add an [appservice] "
                               "section to servletkit.toml")
        self.config = config
        self.context = context
        self.hs = context.homeserver
        self.store = context.store
        self.log = context.log
        self.server_name = self.hs.server_name
        self.bot_jid = f"{config.component_jid}/gateway"
        self.link = ComponentLink(config, {
            "groupchat_message": self.xmpp_groupchat,
            "message": self.xmpp_direct,
            "groupchat_presence": self.xmpp_presence,
            "reactions": self.xmpp_bodiless,
            "message_retract": self.xmpp_bodiless,
            "chatstate": self.xmpp_chat_state,
            MODERATION_EVENT: self.xmpp_moderated,
        }, self._online, self._offline, self.log)
        self.xmpp: ComponentXMPP | None = None
        self.accounts = Accounts(self)
        # per connection (rebuilt after each reconnect): who is in each MUC
        self.occupants: dict[str, dict[str, str]] = {}  # muc → nick → XMPP address
        self.puppets: dict[tuple[str, str], str] = {}  # (muc, user_id) → nick in the MUC
        self.our_nicks: dict[str, set[str]] = {}  # muc → nicks our puppets have or are taking
        self.rooms: dict[str, str] = {}  # muc → room ID (mirrors the store's room/ keys)
        self.moderation_versions: dict[str, str] = {}  # muc → its XEP-0425 namespace
        # (muc, Matrix user or XMPP address) → MUC affiliation and role, as last set or seen
        self.standings: dict[tuple[str, str], tuple[str, str]] = {}
        self.xmpp_powers: dict[tuple[str, str], tuple[str, str]] = {}
        self._out_wake = asyncio.Event()
        self._expected_out: dict[str, float] = {}  # queued keys → deadline to see them
        self._in_seq = itertools.count()
        # operations for Matrix, each with the future of its write to the store
        self._pending_in: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[None]]] = (
            asyncio.Queue())
        self._inbox: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[None]]] = (
            asyncio.Queue())
        self._tasks: list[asyncio.Task[None]] = []
        self._joined_matrix: set[tuple[str, str]] = set()  # (room_id, virtual user)
        self._profiles: dict[str, str] = {}  # virtual user → display name set
        self.typing: dict[str, frozenset[str]] = {}  # room ID → Matrix users typing
        self.xmpp_typing: set[tuple[str, str]] = set()  # (room ID, virtual user) typing

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers and the component link (returns without waiting for XMPP)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._out_worker(), name="xmpp-out"),
                       loop.create_task(self._persist_worker(), name="xmpp-persist"),
                       loop.create_task(self._in_worker(), name="xmpp-in")]
        if self.config.keep_days:
            self._tasks.append(loop.create_task(
                retention.run(self.store, self.config.keep_days, self.log), name="xmpp-prune"))
        self.link.start()
        await self.accounts.start()

    async def close(self) -> None:
        """Close the XMPP stream and stop the workers (the queues stay in the store)."""
        await self.accounts.close()
        await self.link.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _online(self, xmpp: ComponentXMPP) -> None:
        """A new session: rejoin every bridged MUC and its puppets, then send the backlog."""
        self._offline()
        self.xmpp = xmpp
        self.rooms = {k.removeprefix("room/"): v for k, v in await self.store.items("room/")}
        for muc, room_id in list(self.rooms.items()):
            await self.join_bot(muc)
            await self._drop_ghosts(muc, room_id)
            for member_key, nick in await self.store.items(f"member/{room_id}/"):
                await self.join_puppet(muc, room_id, member_key.rsplit("/", 1)[1], nick)
        for key, state in await self.store.items("history/"):
            if state == history.PENDING:
                self._start(self._backfill(key.removeprefix("history/")), "xmpp-history")
        self._out_wake.set()
        if set(self.config.rooms) - set(self.rooms):
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._bridge_configured(xmpp), name="xmpp-configured-rooms"))

    async def _bridge_configured(self, session: ComponentXMPP) -> None:
        """Bridge the rooms of ``rooms`` that are not yet, retrying while the homeserver
        is not there (it may start after the container), for as long as ``session`` lasts."""
        delay = self.config.reconnect_min
        while self.xmpp is session:
            missing = [muc for muc in self.config.rooms if muc not in self.rooms]
            if not missing:
                return
            try:
                for muc in missing:
                    await self.ensure_room(muc)
            except Exception as exc:
                self.log.info("cannot bridge %s from the config yet (%s); retrying in %.1f s",
                              missing, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max)

    async def _drop_ghosts(self, muc: str, room_id: str) -> None:
        """After (re)joining ``muc``: virtual users of people no longer in it leave Matrix.

        The occupants are complete once the join returned (the MUC sends them before
        the gateway's own presence); whoever left while the gateway was away would
        otherwise stay in the Matrix room for ever.
        """
        present = {names.virtual_localpart(self.config.user_prefix, address)
                   for address in self.occupants.get(muc, {}).values()}
        try:
            joined = await self.hs.request("GET", f"/_matrix/client/v3/rooms/"
                                           f"{quote(room_id, safe='')}/joined_members")
        except Exception as exc:  # the homeserver may be down: try at the next session
            self.log.info("cannot check %s for departed XMPP users: %s", room_id, exc)
            return
        for user_id in joined.get("joined", {}):
            localpart = user_id[1:].split(":", 1)[0]
            address = names.xmpp_address_of(self.config.user_prefix, localpart)
            if self.is_ours(user_id) and address and localpart not in present:
                self.queue_in({"op": "leave", "muc": muc, "address": address})

    def _offline(self) -> None:
        self.xmpp = None
        self.occupants.clear()
        self.puppets.clear()
        self.our_nicks.clear()
        self.moderation_versions.clear()
        self.standings.clear()
        self.xmpp_powers.clear()

    @property
    def online(self) -> bool:
        """Whether the component has a live session."""
        return self.xmpp is not None

    # -- rooms ------------------------------------------------------------------

    async def room_for_alias(self, alias: str) -> bool | None:
        """``on_query_alias``: create the Matrix room of an ``#{alias_prefix}…`` alias."""
        muc = names.room_of_alias(alias, self.config.alias_prefix, self.config.muc_domain)
        if muc is None or not alias.endswith(f":{self.server_name}"):
            return None
        localpart = alias[1:].split(":", 1)[0]
        room_id = await self.hs.create_room(
            alias_localpart=localpart, preset="public_chat", name=muc,
            topic=f"Bridged to the XMPP group chat xmpp:{muc}?join")
        await self._map_room(muc, room_id)
        return True

    async def ensure_room(self, muc: str) -> str:
        """The Matrix room of ``muc`` (bridged by configuration), created if missing."""
        room_id: str | None = await self.store.get(f"room/{muc}")
        if room_id is not None:
            return room_id
        room, _, _ = muc.partition("@")
        localpart = names.alias_localpart(self.config.alias_prefix, room, self.config.muc_domain)
        try:
            room_id = await self.hs.create_room(alias_localpart=localpart, preset="public_chat",
                                                name=muc)
        except Exception as exc:  # the alias exists already: adopt its room
            if getattr(exc, "errcode", None) != "M_ROOM_IN_USE":
                raise
            room_id = await self.hs.join(f"#{localpart}:{self.server_name}")
        await self._map_room(muc, room_id)
        return room_id

    async def _map_room(self, muc: str, room_id: str) -> None:
        await self.store.put(f"room/{muc}", room_id)
        await self.store.put(f"mroom/{room_id}", muc)
        await self.store.put(f"history/{muc}", history.PENDING)
        self.rooms[muc] = room_id
        self.log.info("bridging %s and %s", room_id, muc)
        if self.online:
            await self.join_bot(muc)
            self._start(self._backfill(muc), "xmpp-history")

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(work, name=name))

    async def _backfill(self, muc: str) -> None:
        """Give a newly bridged room and MUC each other's recent past, once
        (:mod:`~servletkit_xmpp_gateway.history`)."""
        count, room_id = self.config.history_backfill, self.rooms.get(muc)
        if await self.store.get(f"history/{muc}") != history.PENDING or room_id is None:
            return
        try:
            if count:
                for op in await history.from_xmpp(self, muc, count):
                    self.queue_in(op)
                events = await history.from_matrix(self, room_id, count)
                gone = await history.departed(self, room_id, {e.sender for e in events})
                for event in events:  # those who left have no name in the room any more
                    await self.queue_out({"op": "msg", "muc": muc, **_carried(event),
                                          "ts": event.origin_server_ts,
                                          "displayname": gone.get(event.sender)})
                for user in gone:
                    await self.queue_out({"op": "leave", "muc": muc, "room_id": room_id,
                                          "user": user})
        except Exception:
            self.log.exception("could not exchange the history of %s and %s; trying "
                               "again at the next connection", muc, room_id)
            return
        await self.store.put(f"history/{muc}", "done")

    # -- Matrix side --------------------------------------------------------------

    def is_ours(self, user_id: str) -> bool:
        """Whether ``user_id`` is the appservice's bot or one of its virtual users."""
        localpart = user_id[1:].split(":", 1)[0]
        return (user_id == self.hs.user_id
                or (localpart.startswith(self.config.user_prefix)
                    and user_id.endswith(f":{self.server_name}")))

    async def matrix_event(self, event: Event) -> None:
        """``on_stored_event``: queue what the XMPP side must see of ``event``."""
        if event.type == "m.room.member" and event.state_key == self.hs.user_id:
            await linking.bot_membership(self, event)
            return
        if event.type == "m.room.member" and event.state_key and self.is_ours(event.state_key):
            if not await self.matrix_sanction(event,
                                              await self.store.get(f"mroom/{event.room_id}")):
                await self.virtual_membership(event)
            return
        if self.is_ours(event.sender):
            return  # our own puppets speaking: never echo back
        muc = await self.store.get(f"mroom/{event.room_id}")
        if muc is None:
            dm = await self.store.get(f"dm/{event.room_id}")
            if dm is not None and event.type in CARRIED:
                await self.queue_out({"op": "dm", "to": dm["xmpp"], **_carried(event)})
            elif dm is None:
                await linking.command(self, event)
            return
        membership = event.content.get("membership")
        if event.type == "m.room.member" and event.state_key is not None and (
                membership in ("leave", "ban") or event.state_key == event.sender):
            # a Matrix user's own join or leave, or their kick or ban by a moderator
            op = "join" if membership == "join" else "leave"
            await self.queue_out({"op": op, "muc": muc, "room_id": event.room_id,
                                  "user": event.state_key,
                                  "displayname": event.content.get("displayname")})
        elif event.type == "m.room.power_levels" and event.state_key == "":
            await self.queue_out({"op": "power", "muc": muc, "room_id": event.room_id,
                                  "user": event.sender, "content": dict(event.content)})
        elif event.type in CARRIED:
            await self.queue_out({"op": "msg", "muc": muc, **_carried(event)})

    async def queue_out(self, op: dict[str, Any]) -> None:
        """Append ``op`` to the durable outbound queue (committed with the transaction)."""
        seq = int(await self.store.get("seq/out", 0)) + 1
        await self.store.put("seq/out", seq)
        key = f"out/{seq:012d}"
        await self.store.put(key, op)
        self._expected_out[key] = time.monotonic() + COMMIT_WAIT
        self._out_wake.set()

    async def _out_worker(self) -> None:
        """Apply committed outbound operations in order while online."""
        while True:
            await self._out_wake.wait()
            self._out_wake.clear()
            while self.online:
                items = await self.store.items("out/")
                if not items:
                    now = time.monotonic()
                    self._expected_out = {k: d for k, d in self._expected_out.items() if d > now}
                    if not self._expected_out:
                        break
                    await asyncio.sleep(0.005)  # its transaction is still being committed
                    continue
                for key, op in items:
                    if not self.online:
                        break
                    try:
                        await self.apply_out(op)
                    except Exception:
                        if not self.online:
                            break  # the connection dropped: keep it for the next session
                        self.log.exception("could not relay %s to XMPP; dropped", op.get("op"))
                    await self.store.delete(key)
                    self._expected_out.pop(key, None)

    # -- XMPP side: queue -----------------------------------------------------------

    def queue_in(self, op: dict[str, Any]) -> None:
        """Queue an operation for Matrix (called from the component's callbacks)."""
        op["key"] = f"in/{time.time_ns():020d}-{next(self._in_seq):06d}"
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_in.put_nowait((op, written))
        self._inbox.put_nowait((op, written))

    async def _persist_worker(self) -> None:
        """Write each queued operation to the store (in order), then settle its future.

        A ``stamp`` (the MUC's stanza-id of a puppet's message) only writes the
        message-id map: it is done here instead, ahead of the Matrix requests queued
        before it, so that a Matrix reaction, reply or redaction right after the
        message already refers to it by that id; ``_in_worker`` waits for it in order.
        """
        while True:
            op, written = await self._pending_in.get()
            try:
                if op["op"] == "stamp":
                    await msgids.add_stanza_id(self.store, op["muc"], op["id"], op["stanza_id"])
                elif op["op"] not in UNSTORED:
                    await self.store.put(op["key"], op)
                written.set_result(None)
            except Exception as exc:  # applied anyway; only a crash right now would lose it
                self.log.exception("could not store %s for Matrix", op.get("op"))
                written.set_exception(exc)

    async def _in_worker(self) -> None:
        """Apply what a previous run left in the store, then each operation as it is
        queued, in order; an operation leaves the store once applied and written."""
        now = f"in/{time.time_ns():020d}"  # keys from before this run (queue_in's form)
        for key, op in await self.store.items("in/"):
            if key >= now:
                break
            await self._apply_in_retrying(op)
            await self.store.delete(key)
        while True:
            op, written = await self._inbox.get()
            if op["op"] == "stamp":  # applied by _persist_worker; the next ops wait for it
                with contextlib.suppress(Exception):
                    await written
                continue
            await self._apply_in_retrying(op)
            with contextlib.suppress(Exception):
                await written
                if op["op"] not in UNSTORED:
                    await self.store.delete(op["key"])

    async def _apply_in_retrying(self, op: dict[str, Any]) -> None:
        """Apply ``op`` to Matrix, retrying with backoff while the homeserver is unreachable."""
        delay = self.config.reconnect_min
        while True:
            try:
                await self.apply_in(op)
                return
            except Exception as exc:
                if not _transient(exc):
                    self.log.exception("could not relay %s to Matrix; dropped", op.get("op"))
                    self.refuse_in(op, exc)
                    return
                self.log.warning("homeserver unreachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max)


def _carried(event: Event) -> dict[str, Any]:
    """The fields of an outbound operation that carries Matrix ``event``."""
    redacts = event.content.get("redacts") or event.extra.get("redacts")
    return {"room_id": event.room_id, "user": event.sender, "event_id": event.event_id,
            "type": event.type, "content": dict(event.content), "redacts": redacts}


def _transient(exc: Exception) -> bool:
    """Whether a failed Matrix request is worth retrying (unreachable, 5xx, 429)."""
    if isinstance(exc, httpx.TransportError):
        return True
    status = getattr(exc, "status", None)
    return isinstance(status, int) and (status >= 500 or status == 429)
