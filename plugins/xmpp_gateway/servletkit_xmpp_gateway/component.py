"""The XMPP side: one XEP-0114 external component connection, kept up with backoff.

:class:`StreamLink` keeps one XMPP stream up; :class:`ComponentLink` is the
gateway's component (linked accounts' client sessions are another kind,
:class:`~servletkit_xmpp_gateway.accounts.AccountLink`). Each attempt builds a fresh
stream, here a :class:`slixmpp.ComponentXMPP` (so no stale MUC state survives a reconnect),
waits for the handshake, reports it with ``on_online(xmpp)``, waits for the
stream to end, reports ``on_offline()``, sleeps (doubling from
``reconnect_min`` to ``reconnect_max`` seconds, reset by a good session) and
tries again, until :meth:`ComponentLink.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from slixmpp.basexmpp import BaseXMPP
from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from servletkit_xmpp_gateway.config import GatewayConfig

Handler = Callable[[Any], None]
HANDSHAKE_TIMEOUT = 10.0
# corrections, fallbacks, replies, reactions, retractions, chat states, out-of-band data,
# archive queries (stanza plugins both sides use)
XEPS = ("xep_0308", "xep_0428", "xep_0461", "xep_0444", "xep_0424", "xep_0085", "xep_0066",
        "xep_0313")
S = TypeVar("S", bound=BaseXMPP)
# a MUC's XEP-0425 moderation announcement (old and current form) fires this event
MODERATION_EVENT = "muc_moderation"
_MODERATION_PATHS = ("{%s}message/{urn:xmpp:fasten:0}apply-to",
                     "{%s}message/{urn:xmpp:message-retract:1}retract"
                     "/{urn:xmpp:message-moderate:1}moderated")


def watch_moderation(xmpp: BaseXMPP) -> None:
    """Make ``xmpp`` fire :data:`MODERATION_EVENT` for a MUC's XEP-0425 announcements
    (they have no body, so slixmpp's ``groupchat_message`` never sees them)."""
    for path in _MODERATION_PATHS:
        xmpp.register_handler(Callback(
            f"moderation {path}", MatchXPath(path % xmpp.default_ns),
            lambda msg: xmpp.event(MODERATION_EVENT, msg)))


class StreamLink(Generic[S]):
    """Keeps one XMPP stream connected; calls back when it is up or down.

    ``handlers`` maps slixmpp event names (``groupchat_message``, ``message``,
    ``presence``) to callbacks installed on every new connection. A subclass
    builds the stream (:meth:`_new_stream`) and connects it (:meth:`_connect`).
    """

    ENDS: tuple[str, ...] = ()  # slixmpp events besides a disconnection that end an attempt

    def __init__(
        self,
        config: GatewayConfig,
        handlers: dict[str, Handler],
        on_online: Callable[[S], Awaitable[None]],
        on_offline: Callable[[], None],
        log: logging.Logger,
    ) -> None:
        self.config = config
        self.handlers = handlers
        self.on_online = on_online
        self.on_offline = on_offline
        self.log = log
        self.xmpp: S | None = None  # the live connection, while online
        self.sessions = 0  # handshakes completed so far (tests and logs read it)
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="xmpp-link")

    async def close(self) -> None:
        """Close the stream (if up) and stop reconnecting."""
        self._closing = True
        xmpp = self.xmpp
        if xmpp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(xmpp.disconnect(wait=1.0), 2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def name(self) -> str:
        """What the logs call this stream."""
        raise NotImplementedError

    def _new_stream(self) -> S:
        """A fresh stream with :data:`XEPS` and the handlers (not connected)."""
        raise NotImplementedError

    def _connect(self, xmpp: S) -> None:
        """Start connecting ``xmpp``."""
        raise NotImplementedError

    def _install(self, xmpp: S, muc: dict[str, Any]) -> S:
        """Register the plugins (``muc``: the XEP-0045 plugin's config) and the handlers."""
        xmpp.register_plugin("xep_0030")
        xmpp.register_plugin("xep_0045", muc)
        xmpp.register_plugin("xep_0071")
        xmpp.register_plugin("xep_0199")
        for plugin in XEPS:
            xmpp.register_plugin(plugin)
        watch_moderation(xmpp)
        for event, handler in self.handlers.items():
            xmpp.add_event_handler(event, handler)
        return xmpp

    async def _run(self) -> None:
        delay = self.config.reconnect_min
        while not self._closing:
            xmpp = self._new_stream()
            ended = asyncio.Event()
            started = asyncio.Event()
            xmpp.add_event_handler("session_start", lambda _e, s=started: s.set())
            for end in ("disconnected", "connection_failed", *self.ENDS):
                xmpp.add_event_handler(end, lambda _e, e=ended: e.set())
            self._connect(xmpp)
            online = await self._first(started, ended)
            if online:
                self.xmpp = xmpp
                self.sessions += 1
                delay = self.config.reconnect_min
                self.log.info("connected as %s", self.name)
                try:
                    await self.on_online(xmpp)
                except Exception:
                    self.log.exception("setting up the XMPP session failed; reconnecting")
                    xmpp.abort()
                await ended.wait()
                self.xmpp = None
                self.on_offline()
                if self._closing:
                    break
                self.log.warning("XMPP connection of %s lost; reconnecting in %.1f s",
                                 self.name, delay)
            elif not self._closing:
                self.log.warning("cannot connect as %s; retrying in %.1f s", self.name, delay)
            xmpp.cancel_connection_attempt()
            xmpp.abort()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max)

    @staticmethod
    async def _first(started: asyncio.Event, ended: asyncio.Event) -> bool:
        """Wait for the handshake or the end of the attempt; ``True`` if online."""
        waiters = [asyncio.ensure_future(started.wait()), asyncio.ensure_future(ended.wait())]
        try:
            await asyncio.wait(waiters, timeout=HANDSHAKE_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return started.is_set() and not ended.is_set()


class ComponentLink(StreamLink[ComponentXMPP]):
    """Keeps the gateway's XEP-0114 component connected (``xmpp_host``:``xmpp_port``)."""

    @property
    def name(self) -> str:
        """The component's JID and where it connects."""
        cfg = self.config
        return f"component {cfg.component_jid} at {cfg.xmpp_host}:{cfg.xmpp_port}"

    def _new_stream(self) -> ComponentXMPP:
        cfg = self.config
        xmpp = ComponentXMPP(  # type: ignore[no-untyped-call]  # slixmpp leaves it unannotated
            cfg.component_jid, cfg.component_secret, host=cfg.xmpp_host, port=cfg.xmpp_port)
        return self._install(xmpp, {"multi_from": True})

    def _connect(self, xmpp: ComponentXMPP) -> None:
        xmpp.connect(self.config.xmpp_host, self.config.xmpp_port)
