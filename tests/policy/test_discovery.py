"""Server discovery as the spec says it, for servers ``[policy] server_urls`` does not name:
the well-known (served by a real HTTP server on loopback), SRV ``_matrix-fed._tcp`` then
``_matrix._tcp`` (an injected lookup; and dnspython asking a real DNS server on loopback),
then port 8448."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import dns.asyncresolver
import dns.message
import dns.rcode
import dns.rrset
import httpx
import pytest
from signedjson.key import generate_signing_key
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from servletkit.wires.policy.discovery import (
    Destination,
    Discovery,
    SrvAnswer,
    SrvRecord,
    dns_srv,
    pick_srv,
)
from servletkit.wires.policy.federation import FederationClient
from servletkit.wires.policy.xmatrix import AuthError
from tests.policy.support import FakeSrv, ToLoopback, serve_loopback

WELL_KNOWN: dict[str, Any] = {}
"""server name -> the JSON its well-known serves (absent: 404)."""


@pytest.fixture(scope="module")
async def well_known_port() -> AsyncIterator[int]:
    """A real HTTP server on loopback serving :data:`WELL_KNOWN` by the asked name."""

    async def well_known(request: Any) -> JSONResponse:
        answer = WELL_KNOWN.get(request.headers["x-name"])
        return JSONResponse(answer or {"errcode": "M_NOT_FOUND"},
                            status_code=404 if answer is None else 200)

    app = Starlette(routes=[Route("/.well-known/matrix/server", well_known)])
    async with serve_loopback(app) as port:
        yield port


@pytest.fixture
def discover(well_known_port: int) -> Callable[..., Any]:
    """``discover(name, srv={...}, well_known={...})`` → (destination, the names whose
    well-known was asked, the SRV names asked)."""
    async def run(name: str, srv: dict[str, Sequence[SrvRecord]] | None = None,
                  well_known: dict[str, Any] | None = None, reachable: bool = True,
                  rng: random.Random | None = None) -> tuple[Destination, list[str], list[str]]:
        WELL_KNOWN.clear()
        WELL_KNOWN.update(well_known or {})
        transport = ToLoopback(well_known_port if reachable else None)
        lookup = FakeSrv(srv or {})
        async with httpx.AsyncClient(transport=transport) as http:
            found = await Discovery(http, lookup, rng=rng).destination(name)
        return found, transport.asked, lookup.asked

    return run


@pytest.mark.parametrize(("name", "url"), [
    ("127.0.0.1", "https://127.0.0.1:8448"),
    ("127.0.0.1:9000", "https://127.0.0.1:9000"),
    ("[::1]", "https://[::1]:8448"),
    ("[::1]:9000", "https://[::1]:9000"),
    ("example.test:9000", "https://example.test:9000"),
])
async def test_ip_literals_and_ports_are_used_as_they_are(discover: Any, name: str,
                                                          url: str) -> None:
    """Steps 1 and 2: no well-known, no SRV."""
    assert await discover(name) == (Destination(url), [], [])


async def test_well_known_delegation_with_a_port(discover: Any) -> None:
    """Step 3 to a name with a port: that name and port, no SRV asked."""
    found = await discover("example.test",
                           well_known={"example.test": {"m.server": "matrix.example.test:443"}})
    assert found == (Destination("https://matrix.example.test:443"), ["example.test"], [])


async def test_well_known_delegation_then_srv(discover: Any) -> None:
    """Step 3 to a name without a port: the delegated name's SRV record, the request still
    naming the delegated server (Host and TLS); no second well-known."""
    found, asked, srv_asked = await discover(
        "example.test", well_known={"example.test": {"m.server": "deleg.test"}},
        srv={"_matrix-fed._tcp.deleg.test": [(10, 0, "fed1.deleg.test", 8000)]})
    assert found == Destination("https://fed1.deleg.test:8000", host="deleg.test")
    assert (asked, srv_asked) == (["example.test"], ["_matrix-fed._tcp.deleg.test"])
    assert found.options() == {"headers": {"Host": "deleg.test"},
                               "extensions": {"sni_hostname": "deleg.test"}}


async def test_well_known_delegation_without_srv_is_port_8448(discover: Any) -> None:
    found, _, srv_asked = await discover(
        "example.test", well_known={"example.test": {"m.server": "deleg.test"}})
    assert found == Destination("https://deleg.test:8448")
    assert srv_asked == ["_matrix-fed._tcp.deleg.test", "_matrix._tcp.deleg.test"]


@pytest.mark.parametrize("reachable", [True, False])
@pytest.mark.parametrize("well_known", [None, {"m.server": ""}, {"m.server": 5}, ["x"]])
async def test_no_usable_well_known_goes_to_srv(discover: Any, reachable: bool,
                                                well_known: Any) -> None:
    """A 404, an unreachable server or an unusable answer: SRV records of the name itself,
    ``_matrix-fed._tcp`` first, the lowest priority's (drawn by weight: here the highest
    draw, which falls on the last record of the running sum)."""
    found, asked, srv_asked = await discover(
        "example.test", reachable=reachable,
        well_known={} if well_known is None else {"example.test": well_known},
        srv={"_matrix-fed._tcp.example.test": [(20, 0, "late.test", 1), (10, 1, "b.test", 2),
                                               (10, 5, "a.test", 3)]}, rng=Draws(6))
    assert found == Destination("https://a.test:3", host="example.test")
    assert asked == ["example.test"] and srv_asked == ["_matrix-fed._tcp.example.test"]


async def test_deprecated_srv_then_port_8448(discover: Any) -> None:
    """Without ``_matrix-fed._tcp``: ``_matrix._tcp``; without either (or a "." target, no
    service): port 8448 of the name."""
    found, _, srv_asked = await discover(
        "example.test", srv={"_matrix._tcp.example.test": [(0, 0, "old.test", 8443)]})
    assert found == Destination("https://old.test:8443", host="example.test")
    assert srv_asked == ["_matrix-fed._tcp.example.test", "_matrix._tcp.example.test"]
    found, _, _ = await discover("example.test",
                                 srv={"_matrix-fed._tcp.example.test": [(0, 0, ".", 0)]})
    assert found == Destination("https://example.test:8448")


async def test_answers_are_remembered(well_known_port: int) -> None:
    """The second ask for a server looks nothing up again."""
    transport, lookup = ToLoopback(well_known_port), FakeSrv({})
    async with httpx.AsyncClient(transport=transport) as http:
        discovery = Discovery(http, lookup)
        first = await discovery.destination("example.test")
        assert await discovery.destination("example.test") == first
    assert (len(transport.asked), len(lookup.asked)) == (1, 2)


async def test_federation_requests_go_where_srv_says_naming_the_server() -> None:
    """A signed request and a key fetch to a server found by SRV connect to the target and
    carry the server's name as Host and TLS name; ``server_urls`` still comes first."""
    seen: list[tuple[str, str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/matrix/server":
            return httpx.Response(404)
        seen.append((str(request.url), request.headers["host"],
                     request.extensions.get("sni_hostname")))
        return httpx.Response(200, json={})

    lookup = FakeSrv({"_matrix-fed._tcp.remote.test": [(0, 0, "fed.remote.test", 8000)]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        client = FederationClient("policy.test", generate_signing_key("k"), http,
                                  {"named.test": "http://127.0.0.1:1"}, srv=lookup)
        await client.request("GET", "remote.test", "/_matrix/federation/v1/version")
        await client.request("GET", "named.test", "/_matrix/federation/v1/version")
    assert seen == [
        ("https://fed.remote.test:8000/_matrix/federation/v1/version", "remote.test",
         "remote.test"),
        ("http://127.0.0.1:1/_matrix/federation/v1/version", "127.0.0.1:1", None)]


class Draws(random.Random):
    """A stand-in for the weighted draw: ``randint`` answers the given values in turn."""

    def __init__(self, *values: int) -> None:
        super().__init__(0)
        self.values = list(values)
        self.ranges: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.ranges.append((a, b))
        return self.values.pop(0)


class _Dns(asyncio.DatagramProtocol):
    """A DNS server on loopback (UDP) answering SRV questions from ``records`` (name →
    the records' text, all with ``ttl``); ``asked``: the names asked."""

    def __init__(self, records: dict[str, Sequence[str]], ttl: int = 300) -> None:
        self.records = records
        self.ttl = ttl
        self.asked: list[str] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        answer = dns.message.make_response(query)
        name = query.question[0].name.to_text()
        self.asked.append(name)
        if name in self.records:
            answer.answer.append(dns.rrset.from_text_list(name, self.ttl, "IN", "SRV",
                                                          self.records[name]))
        else:
            answer.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(answer.to_wire(), addr)


@contextlib.asynccontextmanager
async def loopback_dns(records: dict[str, Sequence[str]], ttl: int = 300
                       ) -> AsyncIterator[tuple[_Dns, Any]]:
    """:class:`_Dns` serving ``records`` on a free UDP port of 127.0.0.1, and an SRV lookup
    (:func:`dns_srv`) asking it, without a cache of its own."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: _Dns(records, ttl), local_addr=("127.0.0.1", 0))
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = transport.get_extra_info("sockname")[1]
    try:
        yield server, functools.partial(dns_srv, resolver=resolver)
    finally:
        transport.close()


async def test_dns_srv_asks_a_real_dns_server() -> None:
    """The default lookup (dnspython) reads SRV records and their TTL from DNS; none for an
    unknown name or a server that does not answer."""
    async with loopback_dns({"_matrix-fed._tcp.example.test.": ["10 5 8000 fed.example.test."]},
                            ttl=120) as (_, lookup):
        assert await lookup("_matrix-fed._tcp.example.test") == SrvAnswer(
            ((10, 5, "fed.example.test", 8000),), 120.0)
        assert await lookup("_matrix._tcp.example.test") == SrvAnswer()


@pytest.mark.parametrize(("ttl", "kept_s"), [(120, 120), (0, 60), (7200, 3600)])
async def test_srv_answer_kept_for_its_ttl(ttl: int, kept_s: int) -> None:
    """A destination found by SRV is remembered for the records' TTL (at least 60 s; and no
    longer than the well-known's answer, an hour when there is none): asked again just
    before, DNS is not asked; just after, it is."""
    now = [1000.0]
    async with (loopback_dns({"_matrix-fed._tcp.example.test.": ["10 5 8000 fed.test."]},
                             ttl=ttl) as (dns_server, lookup),
                httpx.AsyncClient(transport=ToLoopback(None)) as http):
        discovery = Discovery(http, lookup, clock=lambda: now[0])
        found = await discovery.destination("example.test")
        assert found == Destination("https://fed.test:8000", host="example.test")
        now[0] += kept_s - 1
        await discovery.destination("example.test")
        assert len(dns_server.asked) == 1
        now[0] += 2
        assert await discovery.destination("example.test") == found
        assert len(dns_server.asked) == 2


def test_pick_srv_draws_by_weight_among_the_lowest_priority() -> None:
    """RFC 2782: a draw in 0..total weight of the lowest priority's records picks the first
    whose running sum reaches it, zero-weight records first (chosen on a draw of 0)."""
    records = [(5, 0, "heavy-but-late.test", 1), (1, 3, "a.test", 1), (1, 0, "zero.test", 1),
               (1, 1, "b.test", 1)]
    draws = Draws(0, 1, 3, 4)
    assert [pick_srv(records, draws)[2] for _ in range(4)] == [
        "zero.test", "a.test", "a.test", "b.test"]
    assert set(draws.ranges) == {(0, 4)}
    assert pick_srv([(0, 0, "x.test", 1), (0, 0, "y.test", 1)], Draws(0))[2] == "x.test"


async def test_srv_weights_spread_the_servers_chosen() -> None:
    """Through real DNS on loopback and a seeded draw: over 400 discoveries two equal-priority
    records weighing 3 and 1 are chosen about 3:1 (the same counts on every run), the
    lower-priority one never."""
    records = {"_matrix-fed._tcp.example.test.": [
        "10 30 8001 heavy.test.", "10 10 8002 light.test.", "20 100 8003 backup.test."]}
    chosen: list[str] = []
    async with (loopback_dns(records) as (_, lookup),
                httpx.AsyncClient(transport=ToLoopback(None)) as http):
        rng = random.Random(7)
        for _ in range(400):  # a fresh cache each time: every discovery draws
            found = await Discovery(http, lookup, rng=rng).destination("example.test")
            chosen.append(found.base_url)
    heavy = chosen.count("https://heavy.test:8001")
    light = chosen.count("https://light.test:8002")
    assert heavy + light == 400 and 260 <= heavy <= 340, (heavy, light)


@pytest.mark.parametrize(("status", "headers", "lifetime_s"), [
    (200, {"Cache-Control": "max-age=600"}, 600),
    (200, {"Cache-Control": "public, max-age=7200, must-revalidate"}, 7200),
    (200, {"Cache-Control": "max-age=10"}, 300),  # at least 5 minutes
    (200, {"Cache-Control": "max-age=999999999"}, 48 * 3600),  # at most 48 h
    (200, {"Cache-Control": "no-store"}, 300),
    (200, {"Expires": 3 * 3600}, 3 * 3600),  # (a date that many seconds from now)
    (200, {"Expires": "garbage"}, 24 * 3600),
    (200, {}, 24 * 3600),  # no header: a day
    (404, {"Cache-Control": "max-age=600"}, 3600),  # no well-known: an hour
])
async def test_well_known_answer_kept_as_long_as_cache_control_says(
        status: int, headers: dict[str, Any], lifetime_s: int) -> None:
    """A well-known answer is remembered for its max-age (else its Expires), bounded to
    5 min..48 h; a day without either; an absent well-known an hour. Asked again just
    before that (2 s: Expires has whole seconds): nothing is looked up; just after: the
    well-known is asked again."""
    if isinstance(headers.get("Expires"), int):
        headers = {"Expires": email.utils.formatdate(time.time() + headers["Expires"],
                                                     usegmt=True)}
    now = [1000.0]
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        return httpx.Response(status, json={"m.server": "deleg.test:443"}, headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        discovery = Discovery(http, FakeSrv({}), clock=lambda: now[0])
        await discovery.destination("example.test")
        now[0] += lifetime_s - 2
        await discovery.destination("example.test")
        assert asked == ["example.test"]
        now[0] += 4
        await discovery.destination("example.test")
        assert asked == ["example.test"] * 2


async def test_oversized_answers_are_not_read_whole(caplog: pytest.LogCaptureFixture) -> None:
    """A well-known over 50 KiB is not usable (SRV is asked instead), keys over 256 KiB
    cannot be fetched: a server a caller names cannot make the wire hold more."""
    padding = "x" * 300 * 1024

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/matrix/server":
            return httpx.Response(200, json={"m.server": "deleg.test:443", "pad": padding[:51200]})
        return httpx.Response(200, json={"server_name": "big.test", "pad": padding})

    lookup = FakeSrv({})
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        assert await Discovery(http, lookup).destination("big.test") == Destination(
            "https://big.test:8448")
        assert lookup.asked == ["_matrix-fed._tcp.big.test", "_matrix._tcp.big.test"]
        client = FederationClient("policy.test", generate_signing_key("k"), http, srv=lookup)
        with pytest.raises(AuthError, match="cannot be fetched"):
            await client.verify_key("big.test", "ed25519:k")
    assert "the answer is larger than 262144 bytes" in caplog.text
