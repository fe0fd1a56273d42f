"""Linked accounts: a Matrix user's own XMPP account speaks for them.

A linked Matrix user's credentials are kept in the store as ``link/<user_id>`` →
``{"jid": …, "password": …}``, the password sealed with a
:class:`nacl.secret.SecretBox` whose key is derived from ``link_secret_key``. For
each link an :class:`AccountLink` keeps a client session up (with backoff, one
per account). While it is up it is the user's *speaker*: their puppet in every
bridged MUC is that session (joined with the same nick, after the component's
occupant has left, so nobody appears twice) and their messages (MUC and DM) go
out from it. When it drops, or its login is refused, the component's occupant
comes back. The switch runs as a ``speaker`` operation of the outbound queue,
in order with the messages around it (:meth:`Accounts.switch`).

Passwords are never logged and never leave the process except to the XMPP
server; unlinking deletes the record.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import attrs
import nacl.hash
from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from slixmpp import JID, ClientXMPP

from servletkit_xmpp_gateway.component import Handler, StreamLink

if TYPE_CHECKING:
    from servletkit_xmpp_gateway.outbound import OutboundRelay

RESOURCE = "matrix-gateway"  # the linked session's resource
LOGIN_TIMEOUT = 15.0  # seconds a link waits for its first login
LEAVE_WAIT = 5.0  # seconds a switch waits for the old occupant to be gone
LEAVE_POLL = 0.05
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
STREAM_LOGGER = "slixmpp.xmlstream.xmlstream"  # logs every stanza sent and received at DEBUG


class NoSaslFilter(logging.Filter):
    """Drops log records of SASL stanzas: with PLAIN they carry the password (base64)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` may be logged (it holds no SASL element)."""
        return SASL_NS not in record.getMessage()


NO_SASL = NoSaslFilter()


@attrs.frozen
class Credentials:
    """An XMPP account's bare JID and password (kept out of ``repr``)."""

    jid: str
    password: str = attrs.field(repr=False)


def secret_box(key: str) -> SecretBox:
    """The box that seals passwords, keyed with a hash of ``link_secret_key``."""
    digest = nacl.hash.blake2b(key.encode(), digest_size=SecretBox.KEY_SIZE,
                               person=b"sk-xmpp-link", encoder=RawEncoder)
    return SecretBox(digest)


def seal(box: SecretBox, credentials: Credentials) -> dict[str, str]:
    """The store record of ``credentials``: the JID, the password encrypted."""
    sealed = box.encrypt(credentials.password.encode())
    return {"jid": credentials.jid, "password": base64.b64encode(sealed).decode()}


def unseal(box: SecretBox, record: dict[str, str]) -> Credentials:
    """The credentials of a store record (:class:`CryptoError` with another key)."""
    password = box.decrypt(base64.b64decode(record["password"])).decode()
    return Credentials(record["jid"], password)


class AccountLink(StreamLink[ClientXMPP]):
    """Keeps one linked account's client session up; stops for good if its login is
    refused (``on_refused``), since the same password would be refused again."""

    ENDS = ("failed_all_auth",)

    def __init__(self, accounts: Accounts, user_id: str, credentials: Credentials) -> None:
        bridge = accounts.bridge
        handlers: dict[str, Handler] = {"message": functools.partial(bridge.linked_direct, user_id),
                    **{event: functools.partial(bridge.linked_direct, user_id, bodiless=True)
                       for event in ("reactions", "message_retract")}}
        super().__init__(bridge.config, handlers, self._up, self._down, bridge.log)
        self.accounts = accounts
        self.user_id = user_id
        self.credentials = credentials
        self.refused = False
        self.first: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    @property
    def name(self) -> str:
        """The account's JID (never the password)."""
        return f"{self.credentials.jid} (linked by {self.user_id})"

    def _new_stream(self) -> ClientXMPP:
        cfg = self.config
        plain = cfg.client_plaintext
        xmpp = ClientXMPP(f"{self.credentials.jid}/{RESOURCE}", self.credentials.password,
                          plugin_config={"feature_mechanisms": {"unencrypted_scram": plain}})
        xmpp.enable_plaintext = plain
        xmpp.enable_starttls = not plain
        xmpp.enable_direct_tls = False
        xmpp.add_event_handler("failed_all_auth", self._refuse)
        return self._install(xmpp, {})

    def _connect(self, xmpp: ClientXMPP) -> None:
        host = self.config.client_host or None
        xmpp.connect(host, self.config.client_port if host else None)

    async def _up(self, xmpp: ClientXMPP) -> None:
        xmpp.send_presence()  # available: messages to the bare JID reach it too
        if not self.first.done():
            self.first.set_result(True)
        await self.accounts.speaker_changed(self.user_id)

    def _down(self) -> None:
        if not self._closing:  # a closing link's owner (unlink, refusal) switches itself
            self.accounts.spawn(self.accounts.speaker_changed(self.user_id))

    def _refuse(self, _event: Any) -> None:
        self.refused = True
        self._closing = True
        if not self.first.done():
            self.first.set_result(False)
        else:
            self.accounts.spawn(self.accounts.refused(self))


class Accounts:
    """The linked accounts of one running gateway: their records and sessions."""

    def __init__(self, bridge: OutboundRelay) -> None:
        self.bridge = bridge
        key = bridge.config.link_secret_key
        self.box = secret_box(key) if key else None
        stream_log = logging.getLogger(STREAM_LOGGER)
        if NO_SASL not in stream_log.filters:  # even with slixmpp's debug log on
            stream_log.addFilter(NO_SASL)
        self.links: dict[str, AccountLink] = {}  # Matrix user → their session
        self.speaking: dict[str, ClientXMPP] = {}  # Matrix user → the stream speaking
        self._tasks: set[asyncio.Task[None]] = set()  # spawned from slixmpp's callbacks

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def enabled(self) -> bool:
        """Whether linking is configured (``link_secret_key``)."""
        return self.box is not None

    async def start(self) -> None:
        """Start a session for every stored link."""
        if self.box is None:
            return
        for key, record in await self.bridge.store.items("link/"):
            user_id = key.removeprefix("link/")
            try:
                credentials = unseal(self.box, record)
            except CryptoError:
                self.bridge.log.warning("the stored XMPP link of %s does not open with this "
                                        "link_secret_key; ignored", user_id)
                continue
            self._start(user_id, credentials)

    def _start(self, user_id: str, credentials: Credentials) -> AccountLink:
        link = AccountLink(self, user_id, credentials)
        self.links[user_id] = link
        link.start()
        return link

    async def close(self) -> None:
        """Close every session (the records stay) and stop what they started."""
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()
        for task in list(self._tasks):
            task.cancel()

    async def link(self, user_id: str, credentials: Credentials) -> bool | None:
        """Log in as ``credentials``; if that works, store them (sealed) and keep the
        session as ``user_id``'s speaker. ``False``: refused, ``None``: no answer in
        time (neither is stored)."""
        assert self.box is not None
        await self.unlink(user_id, forget=False)
        link = self._start(user_id, credentials)
        try:
            ok: bool | None = await asyncio.wait_for(asyncio.shield(link.first), LOGIN_TIMEOUT)
        except TimeoutError:
            ok = None
        if not ok:
            await link.close()
            self.links.pop(user_id, None)
            return ok
        await self.bridge.store.put(f"link/{user_id}", seal(self.box, credentials))
        return True

    async def unlink(self, user_id: str, forget: bool = True) -> bool:
        """Close ``user_id``'s session and (``forget``) delete their record; whether
        there was one. The component's occupant speaks for them again."""
        link = self.links.pop(user_id, None)
        if link is not None:
            await link.close()
            await self.speaker_changed(user_id)
        had = await self.bridge.store.get(f"link/{user_id}") is not None
        if forget and had:
            await self.bridge.store.delete(f"link/{user_id}")
        return had

    def status(self, user_id: str) -> str:
        """What ``!xmpp status`` says of ``user_id``'s session."""
        link = self.links.get(user_id)
        if link is None:
            return "not connected"
        if link.refused:
            return "its login was refused (link again, or unlink)"
        return "connected" if link.xmpp is not None else "connecting"

    def jid_of(self, user_id: str) -> str | None:
        """The linked JID of ``user_id``, if any."""
        link = self.links.get(user_id)
        return None if link is None else link.credentials.jid

    def speaker(self, user_id: str) -> ClientXMPP | None:
        """The live session that speaks for ``user_id``, if any (one that has ended
        does not, even before :meth:`switch` has caught up with it)."""
        link = self.links.get(user_id)
        stream = self.speaking.get(user_id)
        return stream if link is not None and stream is not None and link.xmpp is stream else None

    def stream(self, sender: JID) -> ClientXMPP | None:
        """The live linked session whose JID is ``sender``, if it speaks for someone."""
        return next((x for user in self.speaking if (x := self.speaker(user)) is not None
                     and x.boundjid == sender), None)

    async def speaker_changed(self, user_id: str) -> None:
        """Queue the switch of ``user_id``'s speaker (in order with their messages)."""
        await self.bridge.queue_out({"op": "speaker", "user": user_id})

    async def refused(self, link: AccountLink) -> None:
        """A running session's login was refused: tell its user, fall back."""
        await self.tell(link.user_id, f"The XMPP server refused the login of "
                        f"{link.credentials.jid}; you speak through the gateway again. "
                        "Send '!xmpp link' to link it anew, or '!xmpp unlink'.")
        await self.speaker_changed(link.user_id)

    async def tell(self, user_id: str, text: str) -> None:
        """Tell ``user_id`` something in their DM with the gateway's bot, if they have one."""
        room_id = await self.bridge.store.get(f"botdm/{user_id}")
        if room_id is not None:
            await self.bridge.notice(room_id, text)

    async def switch(self, user_id: str) -> None:
        """Make the live session of ``user_id`` (else the component) their occupant in
        every MUC they are in: the old one leaves, and once the MUC has let it go,
        the new one joins with the same nick."""
        bridge = self.bridge
        link = self.links.get(user_id)
        want = link.xmpp if link is not None else None
        if want is self.speaking.get(user_id):
            return
        present = [(muc, nick) for (muc, user), nick in bridge.puppets.items()
                   if user == user_id]
        for muc, nick in present:
            await bridge.leave_puppet(muc, bridge.rooms[muc], user_id)
            bridge.our_nicks.setdefault(muc, set()).add(nick)  # its leave is no XMPP user's
            await self._gone(muc, nick)
        if want is None:
            self.speaking.pop(user_id, None)
        else:
            self.speaking[user_id] = want
        for muc, nick in present:
            await bridge.join_puppet(muc, bridge.rooms[muc], user_id, nick)

    async def _gone(self, muc: str, nick: str) -> None:
        """Wait (bounded) until the gateway's bot no longer sees ``nick`` in ``muc``."""
        assert self.bridge.xmpp is not None
        muc_plugin = self.bridge.xmpp.plugin["xep_0045"]
        for _ in range(int(LEAVE_WAIT / LEAVE_POLL)):
            if nick not in (muc_plugin.get_roster(JID(muc), JID(self.bridge.bot_jid)) or []):
                return
            await asyncio.sleep(LEAVE_POLL)
        self.bridge.log.warning("%s still shows %s after %.0f s", muc, nick, LEAVE_WAIT)
