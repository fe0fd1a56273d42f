"""Relay latency and throughput of the XMPP gateway, on loopback, against real servers.

Starts ``servletkit dev --xmpp`` (Prosody + Synapse + the container with the
gateway) in a temporary folder, then measures with a
Matrix client (httpx, ``/sync`` long-poll) and an XMPP client (slixmpp):

* latency p50/p99, one message at a time, Matrix → XMPP and XMPP → Matrix;
* sustained rate: a burst of messages each way, counted on arrival, each exactly once.

The baseline, measured in the same run: Matrix → Matrix (one user sends, another
user's ``/sync`` sees it), the part of the Matrix → XMPP path that Synapse owns.
Target (issue 11): p50 under 100 ms each way. Exit status 1 if missed.
Usage: ``.venv/bin/python benchmarks/xmpp_relay.py [--count N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from servletkit_xmpp_gateway.testing import MatrixUser, XmppUser, eventually

from servletkit.testing.dev import DevProcess, DevStartError, write_dev_config

ROOM = "bench@conference.localhost"
ALIAS = "#_xmpp_bench_conference.localhost:localhost"


class Syncer:
    """Long-polls ``/sync`` for one user and timestamps each message's arrival."""

    def __init__(self, http: httpx.AsyncClient, room_id: str) -> None:
        self.http, self.room_id = http, room_id
        self.arrived: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.since: str | None = None

    async def run(self) -> None:
        empty_filter = json.dumps({"room": {"timeline": {"limit": 1}}})
        while True:
            params: dict[str, Any] = {"timeout": 30000, "filter": empty_filter}
            if self.since:
                params["since"] = self.since
            sync = (await self.http.get("/_matrix/client/v3/sync", params=params,
                                        timeout=60)).json()
            now = time.perf_counter()
            room = sync.get("rooms", {}).get("join", {}).get(self.room_id, {})
            if self.since:
                for event in room.get("timeline", {}).get("events", []):
                    body = event.get("content", {}).get("body")
                    if event["type"] == "m.room.message" and isinstance(body, str):
                        self.arrived.setdefault(body, now)
                        self.counts[body] = self.counts.get(body, 0) + 1
            self.since = sync["next_batch"]


async def login(base: str, user: str, password: str) -> httpx.AsyncClient:
    http = httpx.AsyncClient(base_url=base, timeout=30)
    token = (await http.post("/_matrix/client/v3/login", json={
        "type": "m.login.password", "password": password,
        "identifier": {"type": "m.id.user", "user": user}})).json()["access_token"]
    http.headers["Authorization"] = f"Bearer {token}"
    return http


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return (statistics.median(ordered) * 1000,
            ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000)


async def measure(facts: dict[str, Any], xmpp: dict[str, Any], count: int) -> bool:
    base = facts["homeserver_url"]
    http = await login(base, facts["test_user"]["localpart"], facts["test_user"]["password"])
    sender = MatrixUser(http, facts["test_user"]["user_id"])
    room_id = await sender.join(ALIAS)
    # a second Matrix account (dev registration is open), for the baseline
    peer_name = f"peer{uuid.uuid4().hex[:6]}"
    body: dict[str, Any] = {"username": peer_name, "password": "bench-pw-123"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as anonymous:
        first = (await anonymous.post("/_matrix/client/v3/register", json=body)).json()
        body["auth"] = {"type": "m.login.dummy", "session": first.get("session")}
        reg = (await anonymous.post("/_matrix/client/v3/register", json=body)).json()
    peer_http = httpx.AsyncClient(base_url=base, timeout=30, headers={
        "Authorization": f"Bearer {reg['access_token']}"})
    await MatrixUser(peer_http, reg["user_id"]).join(room_id)
    person = XmppUser(f"{xmpp['jid']}/bench", xmpp["password"])
    await person.login(xmpp["c2s_port"])
    await person.join(ROOM, "person")
    await eventually(lambda: "dev" in person.occupants(ROOM))
    heard: dict[str, float] = {}  # body → when the XMPP client got it (not when a poll saw it)
    person.add_event_handler("message", lambda m: heard.setdefault(m["body"], time.perf_counter()))
    syncer = Syncer(peer_http, room_id)
    task = asyncio.create_task(syncer.run())
    await asyncio.sleep(0.5)

    async def one_matrix(tag: str, i: int) -> tuple[float, float]:
        body = f"{tag} {i}"
        t0 = time.perf_counter()
        await sender.send(room_id, body)
        await eventually(lambda: body in heard and body in syncer.arrived, interval=0.001)
        return heard[body] - t0, syncer.arrived[body] - t0

    to_xmpp, baseline, to_matrix = [], [], []
    for i in range(count):
        x, m = await one_matrix("m2x", i)
        to_xmpp.append(x)
        baseline.append(m)
    for i in range(count):
        body = f"x2m {i}"
        t0 = time.perf_counter()
        person.say(ROOM, body)
        await eventually(lambda body=body: body in syncer.arrived, interval=0.001)
        to_matrix.append(syncer.arrived[body] - t0)

    burst = count * 2
    t0 = time.perf_counter()
    for i in range(burst):
        await sender.send(room_id, f"burst-m {i}")
    await eventually(lambda: len(person.messages(lambda m: m["body"].startswith("burst-m ")))
                     >= burst, within=120, interval=0.01)
    m_rate = burst / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(burst):
        person.say(ROOM, f"burst-x {i}")
    await eventually(lambda: sum(1 for b in syncer.arrived if b.startswith("burst-x "))
                     >= burst, within=120, interval=0.01)
    x_rate = burst / (time.perf_counter() - t0)
    await asyncio.sleep(1.0)
    got_m = [m["body"] for m in person.messages(lambda m: m["body"].startswith("burst-m "))]
    doubled = (len(got_m) != len(set(got_m))
               or any(n != 1 for b, n in syncer.counts.items() if b.startswith("burst-x ")))
    task.cancel()
    await person.logout()
    for client in (http, peer_http):
        await client.aclose()

    rows = [("Matrix -> XMPP", *percentiles(to_xmpp)),
            ("XMPP -> Matrix", *percentiles(to_matrix)),
            ("Matrix -> Matrix (baseline)", *percentiles(baseline))]
    print(f"{count} messages each way, one at a time (ms):")
    for name, p50, p99 in rows:
        print(f"  {name:28s} p50 {p50:7.1f}   p99 {p99:7.1f}")
    print(f"sustained, {burst} messages each way: Matrix -> XMPP {m_rate:.0f}/s, "
          f"XMPP -> Matrix {x_rate:.0f}/s; lost 0, doubled {'some' if doubled else 0}")
    ok = rows[0][1] < 100 and rows[1][1] < 100 and not doubled
    print("target p50 < 100 ms each way:", "met" if ok else "MISSED")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description="XMPP gateway relay benchmark")
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_dev_config(Path(tmp), {"xmpp_gateway": {}})
        try:
            run = DevProcess.start(config, timeout=120.0, args=["--xmpp"])
        except DevStartError as exc:
            print(f"servletkit dev --xmpp did not start: {exc}", file=sys.stderr)
            return 2
        try:
            return 0 if asyncio.run(measure(run.facts, run.facts["extensions"]["xmpp"],
                                            args.count)) else 1
        finally:
            run.stop(60)


if __name__ == "__main__":
    sys.exit(main())
