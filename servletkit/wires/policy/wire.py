"""The policy wire: servletkit as a room's policy server (MSC4284, Matrix v1.18).

Every homeserver of a room whose ``m.room.policy`` names this server (and
which it has joined) POSTs each event to ``/_matrix/policy/v1/sign`` before
accepting it. The wire checks the caller (X-Matrix), the event (its content
hash), asks the plugins' interception hooks with ``event.wire == "policy"``,
and answers with a signature by the policy key (allow, or no opinion) or
``400 M_FORBIDDEN`` with the plugin's reason (veto), which Synapse hands to
the sender verbatim. A ``Modify`` cannot apply here (a signed event cannot
change): the dispatcher reports it as the plugin's error.

It is a small federation peer with a listener of its own (HTTPS on
``[policy] host``:``port``), entered as the wire's lifespan, hardened as the
container's own (:func:`servletkit.wires.http.hardened_config`: ``[server]
header_timeout_s`` and ``keep_alive_s``, no query strings in the access log), and a TLS
handshake not done within ``[policy] tls_handshake_timeout_s`` closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from servletkit.container.config import ServerConfig
from servletkit.files import FolderBusy, claim_lock
from servletkit.hooks.dispatcher import Dispatcher
from servletkit.wires.errors import EXCEPTION_HANDLERS
from servletkit.wires.http import hardened_config, start_serving
from servletkit.wires.policy import endpoints
from servletkit.wires.policy.discovery import SrvLookup, dns_srv
from servletkit.wires.policy.federation import MAX_KEY_FETCHES, FederationClient
from servletkit.wires.policy.join import PolicyPeer
from servletkit.wires.policy.keys import PolicyKeys, load_keys, self_signed_pair
from servletkit.wires.policy.pdu import PduError, RoomVersion
from servletkit.wires.policy.rooms import Rooms
from servletkit.wires.policy.verdicts import Judge

if TYPE_CHECKING:
    from servletkit.container.runtime import Container

log = logging.getLogger("servletkit.policy_wire")

SHUTDOWN_TIMEOUT_S: Final = 5
TLS_HANDSHAKE_TIMEOUT_S: Final = 10.0
"""The default of ``[policy] tls_handshake_timeout_s``."""
LOCK_FILE: Final = "container.lock"
"""Held in ``state_dir`` by the running container: one container per policy key pair."""


class StateDirBusy(RuntimeError):
    """Another running container serves from this ``state_dir`` (same keys, same rooms)."""


class PolicyWire:
    """The policy server's endpoints, its listener, and its side of federation."""

    name: Final = "policy"
    honours_modify: Final = False

    def __init__(
        self,
        dispatcher: Dispatcher,
        server_name: str,
        keys: PolicyKeys,
        rooms: Rooms,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[Path, Path] | None = None,
        server_urls: Mapping[str, str] | None = None,
        ready: asyncio.Event | None = None,
        http: httpx.AsyncClient | None = None,
        server: ServerConfig | None = None,
        srv: SrvLookup = dns_srv,
        max_key_fetches: int = MAX_KEY_FETCHES,
        tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
        invite_servers: Collection[str] = (),
    ) -> None:
        self.server_name = server_name
        self.keys = keys
        self.rooms = rooms
        self.host, self.port = host, port
        self.tls = tls
        self.limits = server or ServerConfig()
        """``[server] header_timeout_s`` and ``keep_alive_s``, for this listener too."""
        self.tls_handshake_timeout_s = tls_handshake_timeout_s
        self.invite_servers = frozenset(invite_servers)
        """Whose invites are accepted (empty: anyone's)."""
        self.judge = Judge(dispatcher, server_name, keys.policy, ready)
        self._http = http or httpx.AsyncClient(verify=True)
        self.federation = FederationClient(server_name, keys.federation, self._http,
                                           server_urls, srv, max_key_fetches)
        self.peer = PolicyPeer(self.federation, keys, rooms)
        app = Starlette(routes=endpoints.routes(self), exception_handlers=EXCEPTION_HANDLERS)
        app.router.redirect_slashes = False  # federation is answered, never redirected
        self.app = endpoints.with_fast_sign(self, app)
        self._background: set[asyncio.Task[Any]] = set()

    def routes(self) -> list[BaseRoute]:
        """None in the container's app: the wire serves federation on a listener of its own."""
        return []

    async def settled(self, timeout_s: float) -> None:
        """At once: homeservers call the wire, nothing connects to it first."""

    async def received(self, origin: str, pdus: list[Any]) -> dict[str, dict[str, Any]]:
        """The answer to a ``/send`` transaction's PDUs; notes when we leave a room."""
        results: dict[str, dict[str, Any]] = {}
        from_room_server = self.federation.is_room_server(origin)
        for pdu in pdus:
            try:
                event_id, room = await self.peer.note_pdu(pdu, from_room_server)
            except PduError as exc:
                log.info("policy wire: a PDU from %s is malformed: %s", origin, exc)
                continue
            if event_id is not None:
                results[event_id] = {} if room else {"error": "not a room this server is in"}
        return results

    async def note_served_rooms(self) -> None:
        """Tell the federation client the ``via`` server of every served room (at start:
        the servers their events name are noted as those events arrive)."""
        for room in await self.rooms.all():
            self.federation.note_room_server(room.via)

    async def accept_invite(self, origin: str, event: dict[str, Any], version: RoomVersion
                            ) -> Any:
        """Sign an invite of our policy user (the wire then joins the room in the background);
        :class:`PduError` for another user's, or from a server not in ``invite_servers``."""
        if self.invite_servers and origin not in self.invite_servers:
            raise PduError(f"this policy server accepts invites only from its configured "
                           f"servers ([policy] invite_servers), not from {origin}")
        signed = await self.peer.accept_invite(origin, event, version)
        task = asyncio.create_task(self.peer.join_after_invite(event["room_id"], origin))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return signed

    def _listening_socket(self) -> socket.socket:
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"policy wire: cannot listen on {self.host}:{self.port} "
                          f"([policy] host and port): {exc.strerror}; is another container "
                          "running there? Choose another port") from None
        sock.set_inheritable(True)
        return sock

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Serve federation (HTTPS) on ``host``:``port`` while the app lives, owning
        ``state_dir`` (:class:`StateDirBusy` if another container does); a ``rooms.json``
        of an earlier version is imported into the store first."""
        lock = self._claim_state_dir()
        try:
            await self.rooms.open()
            await self.note_served_rooms()
            async with self._serving():
                yield
        finally:
            lock.close()

    def _claim_state_dir(self) -> TextIO:
        state_dir = self.rooms.state_dir
        try:
            return claim_lock(state_dir / LOCK_FILE)
        except FolderBusy as busy:
            owner = f"pid {busy.owner}" if busy.owner else "a container just starting"
            raise StateDirBusy(
                f"policy wire: {state_dir} ([policy] state_dir) is in use by another "
                f"container ({owner}); two containers with the same policy keys would "
                "answer for the same rooms. Stop it, or give this one its own state_dir"
            ) from None

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        sock = self._listening_socket()
        self.port = sock.getsockname()[1]
        # logging left as the container set it up: uvicorn's loggers are shared by the
        # listeners of one process (a log_level here would silence the container's access log)
        config = hardened_config(self.app, self.limits, lifespan="off", log_config=None,
                                 log_level=None, timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
                                 **_ssl_options(self.tls))
        config.load()
        server = uvicorn.Server(config)
        # Server.serve() without its signal handlers (the container's own server has them)
        server.lifespan = config.lifespan_class(config)
        await start_serving(server, sock, self.tls_handshake_timeout_s)
        ticking = asyncio.create_task(server.main_loop())  # keeps the Date header current
        scheme = "https" if self.tls else "http"
        log.info("policy wire: %s serving federation on %s://%s:%d", self.server_name, scheme,
                 self.host, self.port)
        try:
            yield
        finally:
            for task in list(self._background):
                task.cancel()
            server.should_exit = True
            await ticking
            await server.shutdown(sockets=[sock])
            await self._http.aclose()


def _ssl_options(tls: tuple[Path, Path] | None) -> dict[str, Any]:
    if tls is None:
        return {}
    certificate, private_key = tls
    return {"ssl_certfile": str(certificate), "ssl_keyfile": str(private_key),
            "ssl_version": ssl.PROTOCOL_TLS_SERVER}


def policy_wire(container: Container) -> PolicyWire | None:
    """The container's policy wire, or ``None`` without a ``[policy]`` section."""
    settings = container.config.policy
    if settings is None:
        return None
    state_dir = container.config.resolve(settings.state_dir)
    if settings.tls_certificate and settings.tls_private_key:
        tls = (container.config.resolve(settings.tls_certificate),
               container.config.resolve(settings.tls_private_key))
    else:
        tls = self_signed_pair(state_dir, settings.server_name.rpartition(":")[0]
                               if settings.server_name.rpartition(":")[2].isdigit()
                               else settings.server_name)
    return PolicyWire(container.dispatcher, settings.server_name, load_keys(state_dir),
                      Rooms(container.store, state_dir), host=settings.host,
                      port=settings.port, tls=tls,
                      server_urls=settings.server_urls, ready=container.ready,
                      server=container.config.server,
                      max_key_fetches=settings.max_key_fetches,
                      tls_handshake_timeout_s=settings.tls_handshake_timeout_s,
                      invite_servers=settings.invite_servers)
