"""What a caller naming servers it invents can make the policy wire do: at most
``max_key_fetches`` servers' discovery and key fetches at once, and strangers (servers not
seen in a served room) at most their share of them (counted at a real HTTP server on
loopback that every invented name reaches and that never answers in time), the others
answered at once with 429 ``M_LIMIT_EXCEEDED``; a known server still verified, a room's
server never seen before fetched in a slot kept for it; and bounded per-server state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from signedjson.key import generate_signing_key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from servletkit.testing.waiting import eventually
from servletkit.wires.policy.federation import FederationClient, stranger_slots
from servletkit.wires.policy.xmatrix import AuthError, authorization
from tests.policy.support import (
    POLICY,
    REMOTE,
    FakeSrv,
    RemoteServer,
    ToLoopback,
    serve_loopback,
)

SIGN = "/_matrix/policy/v1/sign"
CAP = 4
SHARE = stranger_slots(CAP)
"""How many of the CAP slots servers not seen in a served room may hold (2)."""
INVENTED = 40


class Held:
    """A loopback HTTP server that holds every request until :attr:`release` is set (at
    most 10 s), then answers 404; it counts the requests in flight and their peak."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = self.peak = self.total = 0

    def app(self) -> Starlette:
        async def hold(request: Request) -> JSONResponse:
            self.in_flight += 1
            self.total += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await asyncio.wait_for(self.release.wait(), 10)
            finally:
                self.in_flight -= 1
            return JSONResponse({"errcode": "M_NOT_FOUND"}, status_code=404)

        return Starlette(routes=[Route("/{path:path}", hold)])


@pytest.fixture
async def held() -> AsyncIterator[tuple[Held, ToLoopback]]:
    """The holding server, and a transport sending any ``https://NAME/`` to it."""
    server = Held()
    async with serve_loopback(server.app()) as port:
        transport = ToLoopback(port)
        yield server, transport
        server.release.set()
        await transport.aclose()


def invented_sign(client: httpx.AsyncClient, name: str, pdu: Any) -> Any:
    """A /sign signed by ``name``'s own (unpublished) key."""
    header = authorization("POST", SIGN, name, POLICY, generate_signing_key("k"), pdu)
    return client.post(SIGN, json=pdu, headers={"Authorization": header})


async def test_invented_origins_cause_bounded_fetches_and_prompt_answers(
        make_policy: Any, held: tuple[Held, ToLoopback]) -> None:
    """40 invented origins at once: at most the strangers' share of CAP fetches reach the
    network, the other callers are answered 429 M_LIMIT_EXCEEDED with retry_after_ms
    while those fetches are still held, the known server is signed for meanwhile; once
    the fetches fail the slots are free again, and a failed name is not fetched again
    within the minute."""
    server, transport = held
    _wire, client, remote = await make_policy({}, fallback=transport, srv=FakeSrv({}),
                                             max_key_fetches=CAP)
    assert (await remote.post(client, SIGN, remote.pdu("known first"))).status_code == 200

    pdu = remote.pdu("flood")
    asks = [asyncio.create_task(invented_sign(client, f"invented{i}.test", pdu))
            for i in range(INVENTED)]
    await eventually(lambda: server.in_flight == SHARE
                     and sum(a.done() for a in asks) == INVENTED - SHARE, within=5, interval=0.01)
    refused = [a.result() for a in asks if a.done()]
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["errcode"] for r in refused} == {"M_LIMIT_EXCEEDED"}
    assert all(r.json()["retry_after_ms"] > 0 for r in refused)

    known = await remote.post(client, SIGN, remote.pdu("during the flood"))
    assert known.status_code == 200 and POLICY in known.json()
    assert server.in_flight == SHARE and server.peak == SHARE and remote.key_requests == 1

    server.release.set()
    fetched = await asyncio.wait_for(asyncio.gather(*asks), 10)
    assert sorted(r.status_code for r in fetched) == [401] * SHARE + [429] * (INVENTED - SHARE)
    assert server.peak == SHARE
    # each fetch: the well-known, then the key endpoint on port 8448 (no SRV record)
    assert server.total == 2 * SHARE

    fresh = await invented_sign(client, "fresh.test", pdu)
    assert fresh.status_code == 401 and server.total == 2 * SHARE + 2
    again = [await invented_sign(client, f"invented{i}.test", pdu) for i in range(INVENTED)]
    failed_before = {r.json()["error"] for r in again if "tried less than" in r.json()["error"]}
    assert {r.status_code for r in again} == {401}
    assert len(failed_before) == SHARE  # no new fetch for those, the others fetched now
    assert server.total == 2 * SHARE + 2 + 2 * (INVENTED - SHARE)
    assert server.peak == SHARE


async def test_failures_are_bounded_and_do_not_evict_working_servers() -> None:
    """Per-server state is an LRU: failed names beyond ``known_servers`` are forgotten,
    and they are kept apart from working servers' keys, which stay cached."""
    remote = RemoteServer()
    async with httpx.AsyncClient(transport=remote.transport()) as http:
        federation = FederationClient(POLICY, generate_signing_key("k"), http,
                                      {REMOTE: f"http://{REMOTE}"}, srv=FakeSrv({}),
                                      known_servers=3)
        await federation.verify_key(REMOTE, "ed25519:a_remote")
        for i in range(20):
            with pytest.raises(AuthError):
                await federation.verify_key(f"invented{i}.test", "ed25519:k")
        assert len(federation._failed) == 3
        await federation.verify_key(REMOTE, "ed25519:a_remote")
    assert remote.key_requests == 1


async def test_unknown_sender_server_while_busy_is_429(
        make_policy: Any, held: tuple[Held, ToLoopback]) -> None:
    """A known server asking about an event whose sender's server is not known yet, while
    every fetch slot is taken: 429 M_LIMIT_EXCEEDED too (not a refusal of the event)."""
    server, transport = held
    _wire, client, remote = await make_policy({}, fallback=transport, srv=FakeSrv({}),
                                              max_key_fetches=1)
    holding = asyncio.create_task(invented_sign(client, "invented.test", remote.pdu()))
    await eventually(lambda: server.in_flight == 1, within=5, interval=0.01)
    answer = await remote.post(client, SIGN, RemoteServer("other.test").pdu())
    assert answer.status_code == 429 and answer.json()["errcode"] == "M_LIMIT_EXCEEDED"
    server.release.set()
    assert (await asyncio.wait_for(holding, 10)).status_code == 401


async def test_a_rooms_new_server_is_served_while_strangers_hold_their_slots(
        make_policy: Any, held: tuple[Held, ToLoopback]) -> None:
    """An attacker's invented servers hang every fetch they can start: they get only the
    strangers' share of the slots. A server never seen before whose user joined a served
    room (the join relayed by a room server, its ``via``, over /send; the same join relayed
    by a server not in the room counts for nothing) then asks: its keys are fetched in a
    kept slot and its event signed, while another stranger is still answered 429."""
    server, transport = held
    newcomer, impostor = RemoteServer("newcomer.test"), RemoteServer("impostor.test")
    wire, client, remote = await make_policy({}, others=[newcomer, impostor],
                                             fallback=transport, srv=FakeSrv({}),
                                             max_key_fetches=CAP)
    assert (await remote.post(client, SIGN, remote.pdu("a member's"))).status_code == 200
    # a server not in the room relaying a join does not make the joiner a room server
    fake_join = newcomer.pdu(type="m.room.member", state_key=f"@alice:{newcomer.name}",
                             content={"membership": "join"})
    assert (await impostor.put(client, "/_matrix/federation/v1/send/t0",
                               {"pdus": [fake_join]})).status_code == 200
    assert not wire.federation.is_room_server(newcomer.name)
    pdu = remote.pdu("flood")
    asks = [asyncio.create_task(invented_sign(client, f"invented{i}.test", pdu))
            for i in range(INVENTED)]
    await eventually(lambda: server.in_flight == SHARE
                     and sum(a.done() for a in asks) == INVENTED - SHARE, within=5,
                     interval=0.01)

    stranger = await RemoteServer("stranger.test").post(client, SIGN, pdu)
    assert stranger.status_code == 429
    join = newcomer.pdu(type="m.room.member", state_key=f"@alice:{newcomer.name}",
                        content={"membership": "join"})
    relayed = await remote.put(client, "/_matrix/federation/v1/send/t1", {"pdus": [join]})
    assert relayed.status_code == 200, relayed.text
    signed = await newcomer.post(client, SIGN, newcomer.pdu("hello from a newcomer"))
    assert signed.status_code == 200 and POLICY in signed.json(), signed.text
    assert newcomer.key_requests == 1
    assert server.in_flight == SHARE and sum(a.done() for a in asks) == INVENTED - SHARE

    server.release.set()
    fetched = await asyncio.wait_for(asyncio.gather(*asks), 10)
    assert sorted(r.status_code for r in fetched) == [401] * SHARE + [429] * (
        INVENTED - SHARE)
