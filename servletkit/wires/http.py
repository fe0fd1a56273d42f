"""uvicorn, hardened, for every HTTP listener: the container's own (``servletkit run`` and
``servletkit dev``, :mod:`servletkit.container.http_server`) and the policy wire's
federation listener (:mod:`servletkit.wires.policy.wire`).

:func:`hardened_config` is the one set-up they share: a deadline for a request's
headers and the keep-alive of ``[server]``, and the access log without query strings.

Header deadline.

uvicorn closes a connection idle *between* requests after its keep-alive
timeout, but one that never sends a request, or sends its headers a byte at a
time, stays open for ever: a few hundred such connections (slowloris) use up the
container's file descriptors. :func:`with_header_timeout` wraps uvicorn's HTTP
protocol so that a connection whose next request's headers have not all
arrived within ``[server] header_timeout_s`` is closed. The body has its own
budget where a wire reads it (``[appservice] body_timeout_s``).

TLS handshake deadline.

A TLS listener's protocol sees a connection only once its handshake is done, so the
header deadline starts after it; until then asyncio's own handshake timeout applies,
60 s by default, which uvicorn does not let one set. :func:`start_serving` starts a
uvicorn server on a socket as uvicorn's ``startup`` does, with the handshake deadline
given (the policy wire's ``[policy] tls_handshake_timeout_s``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import socket

    import uvicorn
    from starlette.types import ASGIApp

    from servletkit.container.config import ServerConfig

log = logging.getLogger("servletkit.http")

ACCESS_LOGGER: Final = "uvicorn.access"

_BUSY: Final = object()
"""A request was being handled at the last check."""


class OpenConnections:
    """How many connections a listener has open (``servletkit_wire_connections``)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


def with_header_timeout(base: type[asyncio.Protocol], timeout_s: float,
                        connections: OpenConnections | None = None) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class ``base``, closing connections without a request's headers
    within ``timeout_s`` (``[server] header_timeout_s``), and counting its open ones in
    ``connections`` if given.

    Checked every ``timeout_s``: a connection with no request handled or in progress
    since the previous check (``base``'s ``cycle``, the request being answered, is
    ``None`` or answered and the same) is closed, so a connection gets between one
    and two ``timeout_s`` for its next request's headers.
    """

    class HeaderTimeout(base):  # type: ignore[valid-type, misc]
        _header_timer: asyncio.TimerHandle | None = None
        _idle_cycle: object = None  # the answered request at the last check (None: none yet)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if connections is not None:
                connections.count += 1
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if connections is not None:
                connections.count -= 1
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(timeout_s, self._check_headers)

        def _check_headers(self) -> None:
            cycle = getattr(self, "cycle", None)
            idle = cycle is None or getattr(cycle, "response_complete", False)
            if idle and cycle is self._idle_cycle:
                log.debug("closing a connection without a request's headers in %g s",
                          timeout_s)
                self.transport.close()
                return
            self._idle_cycle = cycle if idle else _BUSY
            self._arm()

    HeaderTimeout.__qualname__ = HeaderTimeout.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeout


class WithoutQueryString(logging.Filter):
    """Drops the query string from uvicorn's access log lines: a homeserver may send its
    hs_token as ``?access_token=``, and tokens are never logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, _, _ = args[2].partition("?")
            record.args = (*args[:2], path, *args[3:])
        return True


def hardened_config(app: ASGIApp, server: ServerConfig,
                    connections: OpenConnections | None = None,
                    **options: Any) -> uvicorn.Config:
    """uvicorn's config for ``app`` with ``options``, hardened by ``server``: its
    ``header_timeout_s`` and ``keep_alive_s``, and an access log without query strings.
    ``connections``, if given, counts the listener's open connections.

    The filter sits on the access logger itself, after uvicorn has configured
    logging (``options``' ``log_config``, if any), so every listener's lines lose
    their query strings, whoever set logging up.
    """
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    config = uvicorn.Config(app, timeout_keep_alive=server.keep_alive_s,
                            http=with_header_timeout(AutoHTTPProtocol, server.header_timeout_s,
                                                     connections),
                            **options)
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(each, WithoutQueryString) for each in access.filters):
        access.addFilter(WithoutQueryString())
    return config


async def start_serving(server: uvicorn.Server, sock: socket.socket,
                        tls_handshake_timeout_s: float) -> None:
    """``server.startup(sockets=[sock])`` (without a lifespan: the listener's app has none
    of its own), with connections whose TLS handshake is not done within
    ``tls_handshake_timeout_s`` closed (uvicorn leaves asyncio's 60 s)."""
    config = server.config
    if config.lifespan != "off":
        raise ValueError("start_serving serves an app without a lifespan (lifespan='off')")

    def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=server.server_state, app_state=server.lifespan.state,
            _loop=_loop)
        return protocol

    loop = asyncio.get_running_loop()
    server.servers = [await loop.create_server(
        create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog,
        ssl_handshake_timeout=tls_handshake_timeout_s if config.ssl else None)]
    server.started = True
