"""Test kit for the gateway: an XMPP user and a Matrix user that talk through it.

Both are real clients: :class:`XmppUser` is a slixmpp ``ClientXMPP`` logging in
over plain TCP on loopback; :class:`NioUser` is a matrix-nio client that
sees messages through its ``/sync`` loop, as a person's Matrix app would;
:class:`MatrixUser` speaks the client-server API with plain httpx requests.
Their ``wait_*`` methods poll or wait with a bound, and fail the test with what
they saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import nio  # type: ignore[import-untyped]  # matrix-nio ships no py.typed
from slixmpp import JID, ClientXMPP

from servletkit.testing.waiting import eventually
from servletkit_xmpp_gateway import moderation
from servletkit_xmpp_gateway.component import MODERATION_EVENT, XEPS, watch_moderation
from servletkit_xmpp_gateway.msgids import sid_ids

WAIT = 15.0


class XmppUser(ClientXMPP):
    """A human on XMPP: logs in, joins MUCs, keeps every message it receives."""

    def __init__(self, jid: str, password: str) -> None:
        # unencrypted SCRAM on loopback (slixmpp refuses it by default and then hangs)
        super().__init__(jid, password,
                         plugin_config={"feature_mechanisms": {"unencrypted_scram": True}})
        self.enable_plaintext = True
        self.enable_starttls = False
        self.enable_direct_tls = False
        for plugin in ("xep_0030", "xep_0045", "xep_0071", "xep_0199", *XEPS):
            self.register_plugin(plugin)
        self.received: list[Any] = []
        self.presences: list[Any] = []  # MUC presences, as received
        self.failure: str | None = None
        self._started = asyncio.Event()
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("message", self.received.append)
        self.add_event_handler("groupchat_presence", self.presences.append)
        watch_moderation(self)
        for event in ("reactions", "message_retract", "chatstate", MODERATION_EVENT):
            # ``message`` needs a body
            self.add_event_handler(event, self._bodiless)
        for event in ("failed_all_auth", "no_auth"):
            self.add_event_handler(event, lambda _e, ev=event: self._fail(ev))

    def _bodiless(self, msg: Any) -> None:
        if not msg["body"] and all(m is not msg for m in self.received[-5:]):
            self.received.append(msg)

    def _fail(self, why: str) -> None:
        self.failure = why
        self._started.set()

    async def _on_start(self, _event: Any) -> None:
        self.send_presence()
        self._started.set()

    async def login(self, port: int) -> None:
        """Connect to 127.0.0.1:``port`` and wait for the session."""
        self._started.clear()
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self._started.wait(), WAIT)
        if self.failure:
            raise AssertionError(f"{self.boundjid} could not log in: {self.failure}")

    async def logout(self) -> None:
        """Disconnect and wait until the stream is closed."""
        await self.disconnect(wait=1.0)

    async def join(self, room: str, nick: str, history: bool = False) -> list[str]:
        """Join MUC ``room`` as ``nick``; the nicks of the occupants present."""
        _, _, occupants, _ = await self.plugin["xep_0045"].join_muc_wait(
            JID(room), nick, maxstanzas=None if history else 0, timeout=WAIT)
        return [str(p["from"].resource) for p in occupants]

    def say(self, room: str, body: str, xhtml: str | None = None) -> str:
        """Send a groupchat message (with an XHTML-IM body if given); its id."""
        msg = self.make_message(mto=JID(room), mbody=body, mtype="groupchat")
        msg["id"] = msg["id"] or uuid.uuid4().hex
        if xhtml is not None:
            msg["html"]["body"] = xhtml
        msg.send()
        return str(msg["id"])

    def compose(self, to: str, body: str | None = None, mtype: str = "groupchat") -> Any:
        """An unsent message to ``to`` with a fresh id, for the test to complete and send
        (a correction, a reply, reactions, a retraction)."""
        msg = self.make_message(mto=JID(to), mbody=body, mtype=mtype)  # type: ignore[arg-type]
        msg["id"] = uuid.uuid4().hex
        return msg

    def tell(self, to: str, body: str) -> None:
        """Send a 1:1 chat message."""
        self.send_message(mto=JID(to), mbody=body, mtype="chat")

    def messages(self, check: Callable[[Any], bool]) -> list[Any]:
        """The received messages for which ``check`` is true."""
        return [m for m in self.received if check(m)]

    async def wait_message(self, check: Callable[[Any], bool], within: float = WAIT) -> Any:
        """The first received message for which ``check`` is true (waits for it)."""
        found = await eventually(lambda: self.messages(check), within)
        return found[0]

    async def muc_id(self, room: str, msg_id: str) -> str:
        """The XEP-0359 stanza-id MUC ``room`` gave the message ``msg_id`` (from the copy
        this user got): the id group chat replies, reactions and retractions use."""
        got = await self.wait_message(lambda m: m["id"] == msg_id and m["from"].bare == room)
        stanza_id = sid_ids(got, room)[1]
        assert stanza_id, f"{room} gave {msg_id} no stanza-id"
        return stanza_id

    async def moderate(self, room: str, stanza_id: str, reason: str) -> None:
        """Ask MUC ``room`` to retract message ``stanza_id`` for everybody (XEP-0425, in
        the version the MUC advertises); fails the test if it refuses."""
        info = await self.plugin["xep_0030"].get_info(jid=JID(room), timeout=WAIT)
        iq = self.make_iq_set(ito=JID(room))
        iq.xml.append(moderation.request(
            stanza_id, reason, moderation.version_of(set(info["disco_info"]["features"]))))
        await iq.send(timeout=WAIT)  # type: ignore[no-untyped-call]

    def standing(self, room: str, nick: str) -> tuple[str | None, str | None]:
        """The affiliation and role of occupant ``nick`` of ``room``, as last seen."""
        muc = self.plugin["xep_0045"]
        return (muc.get_jid_property(JID(room), nick, "affiliation"),
                muc.get_jid_property(JID(room), nick, "role"))

    async def wait_removed(self, room: str, nick: str, code: int) -> Any:
        """The presence telling that ``nick`` left ``room`` with status ``code`` (307:
        kicked, 301: banned); waits for it."""
        def seen() -> list[Any]:
            return [p for p in self.presences if p["from"] == JID(f"{room}/{nick}")
                    and p["type"] == "unavailable" and code in p["muc"]["status_codes"]]
        return (await eventually(seen, WAIT))[0]

    def occupants(self, room: str) -> set[str]:
        """The nicks slixmpp has seen in ``room`` right now."""
        return set(self.plugin["xep_0045"].get_roster(JID(room)) or [])


class MatrixUser:
    """A Matrix user with a password account, on the client-server API."""

    def __init__(self, http: httpx.AsyncClient, user_id: str) -> None:
        self.http = http
        self.user_id = user_id
        self._since: str | None = None
        self._typing_since: str | None = None
        self._typing: dict[str, set[str]] = {}  # room ID → typing users, as last synced

    async def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One request; fails the test on a non-2xx answer."""
        response = await self.http.request(method, f"/_matrix/client/v3{path}", json=body,
                                           params=params)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    async def join(self, room: str) -> str:
        """Join a room by ID or alias; its room ID."""
        return str((await self.call("POST", f"/join/{quote(room)}", {}))["room_id"])

    async def send(self, room_id: str, body: str, html: str | None = None) -> str:
        """Send an ``m.text`` (formatted if ``html``); its event ID."""
        content: dict[str, str] = {"msgtype": "m.text", "body": body}
        if html is not None:
            content |= {"format": "org.matrix.custom.html", "formatted_body": html}
        path = f"/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}"
        return str((await self.call("PUT", path, content))["event_id"])

    async def set_displayname(self, name: str) -> None:
        """Set this user's display name."""
        await self.call("PUT", f"/profile/{quote(self.user_id)}/displayname",
                        {"displayname": name})

    async def events(self, room_id: str) -> list[dict[str, Any]]:
        """The room's events, oldest first (the last 200)."""
        chunk = (await self.call("GET", f"/rooms/{quote(room_id)}/messages", dir="b",
                                 limit=200))["chunk"]
        return list(reversed(chunk))

    async def messages(self, room_id: str) -> list[dict[str, Any]]:
        """The room's ``m.room.message`` events, oldest first (the last 200)."""
        return [e for e in await self.events(room_id) if e["type"] == "m.room.message"]

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send any message event; its event ID."""
        path = f"/rooms/{quote(room_id)}/send/{quote(event_type)}/{uuid.uuid4().hex}"
        return str((await self.call("PUT", path, content))["event_id"])

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        """Redact ``event_id`` (with ``reason`` if given); the redaction's event ID."""
        path = f"/rooms/{quote(room_id)}/redact/{quote(event_id)}/{uuid.uuid4().hex}"
        body = {} if reason is None else {"reason": reason}
        return str((await self.call("PUT", path, body))["event_id"])

    async def set_power(self, room_id: str, user_id: str, level: int) -> None:
        """Give ``user_id`` power ``level`` in ``room_id`` (this user must have the power)."""
        path = f"/rooms/{quote(room_id)}/state/m.room.power_levels/"
        levels = await self.call("GET", path)
        levels.setdefault("users", {})[user_id] = level
        await self.call("PUT", path, levels)

    async def wait_event(self, room_id: str, check: Callable[[dict[str, Any]], bool],
                         within: float = WAIT) -> dict[str, Any]:
        """The first event of any type in the room for which ``check`` is true."""
        async def found() -> list[dict[str, Any]]:
            return [e for e in await self.events(room_id) if check(e)]
        first: dict[str, Any] = (await eventually(found, within))[0]
        return first

    async def members(self, room_id: str) -> dict[str, Any]:
        """Joined members of the room → their display names."""
        joined = (await self.call("GET", f"/rooms/{quote(room_id)}/joined_members"))["joined"]
        return {user: info.get("display_name") for user, info in joined.items()}

    async def direct_room(self, invitee: str) -> str:
        """Create a DM with ``invitee`` (an XMPP user's virtual user) and wait until it
        has joined; the room ID."""
        room_id = str((await self.call("POST", "/createRoom", {
            "preset": "trusted_private_chat", "is_direct": True,
            "invite": [invitee]}))["room_id"])

        async def joined() -> bool:
            return invitee in await self.members(room_id)
        await eventually(joined)
        return room_id

    async def wait_message(self, room_id: str, check: Callable[[dict[str, Any]], bool],
                           within: float = WAIT) -> dict[str, Any]:
        """The first message event in the room for which ``check`` is true (waits for it)."""
        return await self.wait_event(
            room_id, lambda e: e["type"] == "m.room.message" and check(e), within)

    async def typing(self, room_id: str) -> set[str]:
        """Who the homeserver says is typing in ``room_id`` now (an incremental
        ``/sync`` of its own; the last ``m.typing`` seen stands until another)."""
        params: dict[str, Any] = {"timeout": 0}
        if self._typing_since is not None:
            params["since"] = self._typing_since
        sync = await self.call("GET", "/sync", **params)
        self._typing_since = sync["next_batch"]
        room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
        for event in room.get("ephemeral", {}).get("events", []):
            if event["type"] == "m.typing":
                self._typing[room_id] = set(event["content"]["user_ids"])
        return self._typing.get(room_id, set())

    async def invites(self) -> list[str]:
        """Room IDs this user has been invited to since the last call (incremental
        ``/sync``: Synapse caches an identical initial sync for minutes)."""
        params: dict[str, Any] = {"timeout": 0}
        if self._since is not None:
            params["since"] = self._since
        sync = await self.call("GET", "/sync", **params)
        self._since = sync["next_batch"]
        return list(sync.get("rooms", {}).get("invite", {}))


class NioUser:
    """A Matrix user on a matrix-nio client, as a person's Matrix app would be: it sends
    with nio and sees messages only as its ``/sync`` loop delivers them."""

    def __init__(self, client: nio.AsyncClient) -> None:
        self.client = client
        self.user_id: str = client.user_id
        self.received: list[tuple[str, dict[str, Any]]] = []  # (room ID, event) as synced
        self._syncing: asyncio.Task[None] | None = None

    @classmethod
    async def login(cls, homeserver: str, localpart: str, password: str) -> NioUser:
        """Log in with a password and start syncing in the background."""
        client = nio.AsyncClient(homeserver, localpart)
        answer = await client.login(password)
        assert isinstance(answer, nio.LoginResponse), f"login of {localpart}: {answer}"
        user = cls(client)
        client.add_event_callback(user._on_message, nio.RoomMessage)
        user._syncing = asyncio.get_running_loop().create_task(
            client.sync_forever(timeout=1000), name=f"sync-{localpart}")
        return user

    async def close(self) -> None:
        """Stop syncing and close the client's session."""
        if self._syncing is not None:
            self._syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncing
        await self.client.close()

    async def _on_message(self, room: nio.MatrixRoom, event: nio.RoomMessage) -> None:
        self.received.append((room.room_id, event.source))

    async def join(self, room: str) -> str:
        """Join a room by ID or alias; its room ID."""
        answer = await self.client.join(room)
        assert isinstance(answer, nio.JoinResponse), f"join {room}: {answer}"
        return str(answer.room_id)

    async def send(self, room_id: str, body: str, html: str | None = None) -> str:
        """Send an ``m.text`` (formatted if ``html``); its event ID."""
        content: dict[str, str] = {"msgtype": "m.text", "body": body}
        if html is not None:
            content |= {"format": "org.matrix.custom.html", "formatted_body": html}
        answer = await self.client.room_send(room_id, "m.room.message", content)
        assert isinstance(answer, nio.RoomSendResponse), f"send to {room_id}: {answer}"
        return str(answer.event_id)

    async def set_displayname(self, name: str) -> None:
        """Set this user's display name."""
        answer = await self.client.set_displayname(name)
        assert isinstance(answer, nio.ProfileSetDisplayNameResponse), answer

    async def members(self, room_id: str) -> dict[str, str | None]:
        """Joined members of the room → their display names."""
        answer = await self.client.joined_members(room_id)
        assert isinstance(answer, nio.JoinedMembersResponse), answer
        return {member.user_id: member.display_name for member in answer.members}

    def messages(self, room_id: str) -> list[dict[str, Any]]:
        """The room's ``m.room.message`` events this client has synced, oldest first."""
        return [event for room, event in self.received if room == room_id]

    async def wait_message(self, room_id: str, check: Callable[[dict[str, Any]], bool],
                           within: float = WAIT) -> dict[str, Any]:
        """The first synced message event in the room for which ``check`` is true."""
        found = await eventually(lambda: [e for e in self.messages(room_id) if check(e)],
                                 within)
        first: dict[str, Any] = found[0]
        return first
