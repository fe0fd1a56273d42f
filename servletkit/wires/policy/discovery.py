"""Where a homeserver serves federation: the spec's server discovery ("Resolving server
names" of the server-server API), for the servers ``[policy] server_urls`` does not name.

In order, for a server name:

1. an IP literal: that address, its port or 8448;
2. a host name with a port: that host and port;
3. ``GET https://<name>/.well-known/matrix/server``: its ``m.server`` (a delegated
   name) is resolved by steps 1, 2 and 4 to 6 without looking for another well-known;
4. SRV ``_matrix-fed._tcp.<name>``: the target and port of the record;
5. SRV ``_matrix._tcp.<name>`` (deprecated, still in use);
6. port 8448 of the name.

When an SRV record (steps 4 and 5) says where to connect, the request still names
the server in its ``Host`` header and TLS name (the certificate is the server's,
not the target's): :class:`Destination` carries both. Among several records, the
lowest priority's are chosen from at random in proportion to their weights (RFC 2782,
:func:`pick_srv`); the answer is then remembered no longer than the records' TTL
(at least :data:`SRV_MIN_CACHE_S`). An answer is remembered (for at
most :data:`DISCOVERY_CACHE_SIZE` servers, the least recently asked forgotten first) as
long as the well-known's ``Cache-Control`` (or ``Expires``) says, between
:data:`WELL_KNOWN_MIN_CACHE_S` and :data:`WELL_KNOWN_MAX_CACHE_S` (the spec recommends
at most 48 h), for :data:`WELL_KNOWN_DEFAULT_CACHE_S` without either, and for
:data:`WELL_KNOWN_INVALID_CACHE_S` when there is no usable well-known (the spec: errors
cached up to an hour); the values are Synapse's.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Final

import attrs
import httpx

from servletkit.wires.policy.lru import Lru

log = logging.getLogger("servletkit.policy_wire")

DEFAULT_PORT: Final = 8448
WELL_KNOWN_TIMEOUT_S: Final = 10.0
DNS_TIMEOUT_S: Final = 5.0
WELL_KNOWN_DEFAULT_CACHE_S: Final = 24 * 3600.0
WELL_KNOWN_MIN_CACHE_S: Final = 5 * 60.0
WELL_KNOWN_MAX_CACHE_S: Final = 48 * 3600.0
WELL_KNOWN_INVALID_CACHE_S: Final = 3600.0
DISCOVERY_CACHE_SIZE: Final = 10_000
WELL_KNOWN_MAX_BYTES: Final = 50 * 1024
"""The largest well-known answer read (Synapse's limit): a larger one is not usable."""
SRV_SERVICES: Final = ("_matrix-fed._tcp", "_matrix._tcp")
SRV_MIN_CACHE_S: Final = 60.0
"""An SRV answer is remembered at least this long, whatever its TTL (0 included)."""

SrvRecord = tuple[int, int, str, int]
"""``(priority, weight, target, port)`` of one SRV record."""


@attrs.frozen
class SrvAnswer:
    """The SRV records of a name (none when there are none or DNS fails) and, with them,
    how long DNS says they hold (``ttl_s``)."""

    records: tuple[SrvRecord, ...] = ()
    ttl_s: float | None = None


SrvLookup = Callable[[str], Awaitable[SrvAnswer]]
"""The SRV records of a name, from DNS or injected (tests)."""


@attrs.frozen
class Destination:
    """Where to send a server's federation requests: ``base_url``; and, when it connects to
    another host than the server's name (an SRV target), the name for ``Host`` and TLS."""

    base_url: str
    host: str | None = None

    def options(self) -> dict[str, Any]:
        """httpx request options: the ``Host`` header and the TLS server name, if needed."""
        if self.host is None:
            return {}
        return {"headers": {"Host": self.host},
                "extensions": {"sni_hostname": _split(self.host)[0].strip("[]")}}


def _split(name: str) -> tuple[str, str]:
    """``(host, port)`` of a server name; ``port`` is ``""`` without one (IPv6 aware)."""
    if name.startswith("["):
        host, _, rest = name.partition("]")
        return host + "]", rest.removeprefix(":")
    host, colon, port = name.rpartition(":")
    return (host, port) if colon else (name, "")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def literal_destination(server_name: str) -> Destination | None:
    """Steps 1 and 2: the destination when the name alone says it (an IP or a port)."""
    host, port = _split(server_name)
    if port.isdigit():
        return Destination(f"https://{host}:{port}")
    if _is_ip(host):
        return Destination(f"https://{host}:{DEFAULT_PORT}")
    return None


async def dns_srv(name: str, resolver: Any = None) -> SrvAnswer:
    """The SRV records of ``name`` and their TTL (none on a DNS error), from ``resolver``
    (a dnspython ``dns.asyncresolver.Resolver``), by default the system's."""
    import dns.asyncresolver
    import dns.exception

    try:
        answer = await (resolver or dns.asyncresolver.get_default_resolver()).resolve(
            name, "SRV", lifetime=DNS_TIMEOUT_S)
    except dns.exception.DNSException as exc:
        log.debug("policy wire: no SRV record %s (%s)", name, type(exc).__name__)
        return SrvAnswer()
    return SrvAnswer(tuple((record.priority, record.weight,
                            record.target.to_text(omit_final_dot=True), record.port)
                           for record in answer),
                     None if answer.rrset is None else float(answer.rrset.ttl))


def pick_srv(records: Sequence[SrvRecord], rng: random.Random) -> SrvRecord:
    """The record to connect to (RFC 2782): among those of the lowest priority, one at
    random with a chance in proportion to its weight (zero-weight records first, so that
    they are chosen only when the draw is 0: rarely, unless all weigh 0)."""
    lowest = min(priority for priority, _, _, _ in records)
    candidates = sorted((r for r in records if r[0] == lowest), key=lambda r: r[1] != 0)
    draw = rng.randint(0, sum(weight for _, weight, _, _ in candidates))
    running = 0
    for record in candidates:
        running += record[1]
        if running >= draw:
            return record
    return candidates[-1]  # (not reached: the running sum ends at the total)


def cache_lifetime(headers: Mapping[str, str]) -> float:
    """How long to remember a well-known answered with these headers: its
    ``Cache-Control`` ``max-age`` (``no-store``/``no-cache``: as briefly as allowed), else
    its ``Expires``, bounded between :data:`WELL_KNOWN_MIN_CACHE_S` and
    :data:`WELL_KNOWN_MAX_CACHE_S`; :data:`WELL_KNOWN_DEFAULT_CACHE_S` without either."""
    directives = headers.get("cache-control", "").lower()
    if re.search(r"(?:^|[,\s])no-(?:store|cache)\b", directives):
        return WELL_KNOWN_MIN_CACHE_S
    max_age = re.search(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", directives)
    if max_age is not None:
        lifetime = float(max_age.group(1))
    else:
        try:
            lifetime = parsedate_to_datetime(headers["expires"]).timestamp() - time.time()
        except (KeyError, TypeError, ValueError):
            return WELL_KNOWN_DEFAULT_CACHE_S
    return min(max(lifetime, WELL_KNOWN_MIN_CACHE_S), WELL_KNOWN_MAX_CACHE_S)


async def get_json(http: httpx.AsyncClient, url: str, limit: int, **options: Any
                   ) -> tuple[httpx.Response, Any]:
    """``GET url``: the response (status, headers) and its JSON body, read up to
    ``limit`` bytes (the server named is whoever a caller chose: it must not make us
    hold more); ``ValueError`` if the body is larger or not JSON, ``httpx.HTTPError``
    if the request fails."""
    async with http.stream("GET", url, **options) as response:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise ValueError(f"GET {url}: the answer is larger than {limit} bytes")
    return response, json.loads(body)


class Discovery:
    """Server discovery with its answers remembered; ``srv``: the SRV lookup (injected in
    tests), ``http``: the client of the well-known requests, ``clock``: the time in
    seconds the answers expire by, ``rng``: the draw among weighted SRV records
    (:func:`pick_srv`; seeded in tests)."""

    def __init__(self, http: httpx.AsyncClient, srv: SrvLookup = dns_srv,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self._http = http
        self._srv = srv
        self._clock = clock
        self._rng = rng or random.Random()
        self._known: Lru[str, tuple[Destination, float]] = Lru(DISCOVERY_CACHE_SIZE)

    async def destination(self, server_name: str) -> Destination:
        """Where ``server_name`` serves federation."""
        known = self._known.get(server_name)
        if known is not None and self._clock() < known[1]:
            return known[0]
        found, lifetime = literal_destination(server_name), WELL_KNOWN_INVALID_CACHE_S
        if found is None:
            delegated, lifetime = await self._well_known(server_name)
            found = literal_destination(delegated) if delegated else None
            if found is None:
                found, srv_ttl_s = await self._by_srv(delegated or server_name)
                if srv_ttl_s is not None:
                    lifetime = min(lifetime, max(srv_ttl_s, SRV_MIN_CACHE_S))
        log.debug("policy wire: %s is at %s (for %.0f s)", server_name, found, lifetime)
        self._known.put(server_name, (found, self._clock() + lifetime))
        return found

    async def _well_known(self, server_name: str) -> tuple[str | None, float]:
        """Step 3: the delegated server name, or ``None`` (no well-known, or not usable),
        and how long to remember the answer."""
        try:
            response, body = await get_json(
                self._http, f"https://{server_name}/.well-known/matrix/server",
                WELL_KNOWN_MAX_BYTES, timeout=WELL_KNOWN_TIMEOUT_S, follow_redirects=True)
            delegated = body.get("m.server") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None, WELL_KNOWN_INVALID_CACHE_S
        if not isinstance(delegated, str) or not delegated:
            return None, WELL_KNOWN_INVALID_CACHE_S
        return delegated, cache_lifetime(response.headers)

    async def _by_srv(self, name: str) -> tuple[Destination, float | None]:
        """Steps 4 to 6 for a host name without a port; with the TTL of the SRV records
        used, if any."""
        for service in SRV_SERVICES:
            answer = await self._srv(f"{service}.{name}")
            records = [r for r in answer.records if r[2] not in ("", ".")]
            if records:
                _, _, target, port = pick_srv(records, self._rng)
                host = f"[{target}]" if ":" in target else target
                return Destination(f"https://{host}:{port}", host=name), answer.ttl_s
        return Destination(f"https://{name}:{DEFAULT_PORT}"), None
