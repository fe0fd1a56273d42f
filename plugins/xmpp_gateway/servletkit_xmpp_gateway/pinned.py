"""HTTP fetches whose connection goes to the address that was checked (no DNS rebinding).

Checking a host's addresses and then letting the HTTP client resolve it again
leaves a gap: a host whose DNS answer changes in between (first a public
address, then ``127.0.0.1``) passes the check and is fetched from inside. Here
the resolution, the check and the connection are one step: :class:`PinnedBackend`
is the httpcore network backend of the client, so every TCP connection resolves
its host once, refuses it if any answer is local (unless allowed), and connects
to the first checked address. The URL is unchanged, so the ``Host`` header and
TLS's SNI and certificate check still name the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

Resolve = Callable[[str, int], Awaitable[list[str]]]  # host, port → its IP addresses


class LocalAddressError(httpx.TransportError):
    """A host that resolves to a loopback, private or otherwise non-global address."""


async def resolve_host(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to (TCP), in the resolver's order."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpx.ConnectError(f"cannot resolve {host!r}") from exc
    return [str(sockaddr[0]).split("%", 1)[0] for *_, sockaddr in found]


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the address it resolved and checked itself, and to no other.

    ``resolve`` answers a host's addresses; with ``public_only`` a host with any
    non-global address is refused (:class:`LocalAddressError`).
    """

    def __init__(self, resolve: Resolve = resolve_host, public_only: bool = True) -> None:
        self.resolve = resolve
        self.public_only = public_only
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(  # httpcore's signature, with its timeout
            self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
            local_address: str | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve ``host`` once, check every answer, connect to the first."""
        addresses = await self.resolve(host, port)
        if not addresses:
            raise httpx.ConnectError(f"{host!r} has no address")
        if self.public_only:
            for address in addresses:
                if not ipaddress.ip_address(address).is_global:
                    raise LocalAddressError(f"{host!r} is a local address ({address})")
        return await self._inner.connect_tcp(addresses[0], port, timeout=timeout,
                                             local_address=local_address,
                                             socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        """Sleep as the default backend does (httpcore's retries use it)."""
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that connects through :class:`PinnedBackend`."""

    def __init__(self, backend: PinnedBackend) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(ssl_context=httpx.create_ssl_context(),
                                                  network_backend=backend)


def pinned_client(timeout: float, public_only: bool,
                  resolve: Resolve = resolve_host) -> httpx.AsyncClient:
    """An HTTP client (no redirects) whose connections go only to checked addresses."""
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                             transport=PinnedTransport(PinnedBackend(resolve, public_only)))
